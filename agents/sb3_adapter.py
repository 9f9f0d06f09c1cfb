"""Stable-Baselines3 / sb3-contrib algorithms behind our ``Learner`` interface.

``SB3Agent(algo="PPO", ...)`` wraps any algorithm named in ``ALGORITHMS`` (imported lazily, so
sb3-contrib is only imported when one of its algorithms is used); an extra algorithm is one more
config file, or one ``register_algorithm`` call for a class of your own.

Safety of files. SB3's own ``.zip`` format stores its data with cloudpickle, and loading it runs
whatever code the pickle names. Our files never do: ``save`` and ``save_checkpoint`` write plain
data only (state dicts of tensors, numbers, strings, lists, dicts) through
``agents.checkpoint.atomic_torch_save``, and ``load`` / ``load_checkpoint`` read them with
``safe_torch_load`` (``torch.load(weights_only=True)``). The model is rebuilt from the stored plain
config (algorithm name from our registry, policy alias, policy and algorithm keyword arguments,
observation and action spaces) exactly the way SB3's own ``load`` rebuilds it
(``_init_setup_model=False`` then ``_setup_model()``), then the weights are put back. Hence
``policy_kwargs`` and algorithm kwargs must be plain data: classes are given by name
(``activation_fn: Tanh`` from ``torch.nn``, ``optimizer_class: Adam`` from ``torch.optim``,
``features_extractor_class`` from ``stable_baselines3.common.torch_layers``) and action noise as
``{"type": "normal" | "ornstein_uhlenbeck", "sigma": 0.1}``.

TensorBoard: ``learn`` installs an SB3 ``Logger`` whose outputs are a TensorBoard writer in
``tensorboard_dir`` (when given) and a forwarder to our ``ScalarWriter`` (when given), so both
see SB3's own stable names (``rollout/ep_rew_mean``, ``rollout/ep_len_mean``, ``time/fps``,
``train/loss``, ``train/entropy_loss`` ...), written at SB3's ``log_interval``.
"""

from __future__ import annotations

import importlib
import random
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from agents.base import Learner, ScalarWriter, StepCallback, get_device
from agents.checkpoint import atomic_torch_save, safe_torch_load
from agents.spaces import space_from_dict, space_to_dict
from envs.errors import ConfigError, DataError

__all__ = ["ALGORITHMS", "SB3Agent", "policy_confidence", "register_algorithm"]

_FORMAT = "marketrl.sb3"
_CHECKPOINT_FORMAT = "marketrl.sb3.checkpoint"
_FORMAT_VERSION = 1

# Algorithm name -> "module:Class". Imported only when used.
ALGORITHMS: dict[str, str] = {
    "A2C": "stable_baselines3:A2C",
    "DDPG": "stable_baselines3:DDPG",
    "DQN": "stable_baselines3:DQN",
    "PPO": "stable_baselines3:PPO",
    "SAC": "stable_baselines3:SAC",
    "TD3": "stable_baselines3:TD3",
    "ARS": "sb3_contrib:ARS",
    "CrossQ": "sb3_contrib:CrossQ",
    "MaskablePPO": "sb3_contrib:MaskablePPO",
    "QRDQN": "sb3_contrib:QRDQN",
    "RecurrentPPO": "sb3_contrib:RecurrentPPO",
    "TQC": "sb3_contrib:TQC",
    "TRPO": "sb3_contrib:TRPO",
}

# policy_kwargs entries that name a class, and the only namespace each name is looked up in.
# Looking names up in a fixed namespace (never importing a path read from a file) keeps loading
# free of arbitrary imports.
_CLASS_KWARGS: dict[str, str] = {
    "activation_fn": "torch.nn",
    "optimizer_class": "torch.optim",
    "features_extractor_class": "stable_baselines3.common.torch_layers",
}


def register_algorithm(name: str, import_path: str) -> None:
    """Add ``name -> "module:Class"`` to the registry (for algorithms outside SB3/sb3-contrib)."""
    if ":" not in import_path:
        raise ConfigError(
            f"register_algorithm({name!r}): expected 'module:Class', got {import_path!r}"
        )
    ALGORITHMS[name] = import_path


def _algorithm_class(name: str) -> Any:
    if name not in ALGORITHMS:
        raise ConfigError(f"SB3Agent algo: unknown algorithm {name!r}; known: {sorted(ALGORITHMS)}")
    module_name, class_name = ALGORITHMS[name].split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"SB3Agent algo {name!r}: cannot import {module_name!r} ({exc}); is it installed?"
        ) from exc
    return getattr(module, class_name)


# ------------------------------------------------------------------------------ plain config


def _is_plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


def _to_plain(value: Any) -> Any:
    """OmegaConf containers and tuples -> plain dicts/lists (what weights-only loading accepts)."""
    if isinstance(value, Mapping):
        return {str(k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_to_plain(v) for v in value]  # tuples and OmegaConf ListConfigs too
    if isinstance(value, np.generic):
        return value.item()
    return value


def _plain_policy_kwargs(policy_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate policy kwargs as plain data, turning classes into their names."""
    plain: dict[str, Any] = {}
    for key, value in dict(policy_kwargs or {}).items():
        if key in _CLASS_KWARGS and isinstance(value, type):
            namespace = importlib.import_module(_CLASS_KWARGS[key])
            if getattr(namespace, value.__name__, None) is not value:
                raise ConfigError(
                    f"policy_kwargs.{key} = {value!r}: only classes from {_CLASS_KWARGS[key]} "
                    "can be stored in a code-free file; give the class name"
                )
            value = value.__name__
        value = _to_plain(value)
        if not _is_plain(value):
            raise ConfigError(
                f"policy_kwargs.{key} = {value!r}: expected plain data (numbers, strings, lists, "
                "dicts) so it can be saved without pickle"
            )
        plain[str(key)] = value
    return plain


def _resolve_policy_kwargs(plain: Mapping[str, Any]) -> dict[str, Any]:
    """Plain policy kwargs -> what SB3 expects (class names looked up in fixed namespaces)."""
    resolved = dict(plain)
    for key, namespace_name in _CLASS_KWARGS.items():
        if key not in resolved:
            continue
        name = str(resolved[key]).rsplit(".", 1)[-1]
        namespace = importlib.import_module(namespace_name)
        cls = getattr(namespace, name, None)
        if not isinstance(cls, type):
            raise ConfigError(
                f"policy_kwargs.{key} = {resolved[key]!r}: no class {name!r} in {namespace_name}"
            )
        resolved[key] = cls
    return resolved


def _plain_algo_kwargs(algo_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    plain: dict[str, Any] = {}
    for key, value in dict(algo_kwargs or {}).items():
        if key in ("policy", "env", "policy_kwargs", "tensorboard_log"):
            raise ConfigError(f"algo_kwargs.{key}: set it through SB3Agent's own argument")
        value = _to_plain(value)
        if not _is_plain(value):
            raise ConfigError(
                f"algo_kwargs.{key} = {value!r}: expected plain data (numbers, strings, lists, "
                "dicts) so the agent can be saved without pickle"
            )
        plain[str(key)] = value
    return plain


def _resolve_algo_kwargs(plain: Mapping[str, Any], action_space: spaces.Space) -> dict[str, Any]:
    resolved = dict(plain)
    if "train_freq" in resolved and isinstance(resolved["train_freq"], list):
        resolved["train_freq"] = tuple(resolved["train_freq"])  # SB3 wants (n, "step")
    noise = resolved.get("action_noise")
    if isinstance(noise, Mapping):
        from stable_baselines3.common.noise import NormalActionNoise, OrnsteinUhlenbeckActionNoise

        if not isinstance(action_space, spaces.Box):
            raise ConfigError("algo_kwargs.action_noise: only for Box action spaces")
        kind, sigma = noise.get("type", "normal"), float(noise.get("sigma", 0.1))
        shape = action_space.shape
        noise_classes = {
            "normal": NormalActionNoise,
            "ornstein_uhlenbeck": OrnsteinUhlenbeckActionNoise,
        }
        if kind not in noise_classes:
            raise ConfigError(
                f"algo_kwargs.action_noise.type = {kind!r}: expected one of {sorted(noise_classes)}"
            )
        resolved["action_noise"] = noise_classes[kind](np.zeros(shape), sigma * np.ones(shape))
    return resolved


def _space_to_plain(space: spaces.Space) -> dict[str, Any]:
    """Box / Discrete / Dict via ``agents.spaces``; MultiDiscrete and MultiBinary here."""
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": np.asarray(space.nvec).tolist()}
    if isinstance(space, spaces.MultiBinary):
        return {"type": "MultiBinary", "n": np.atleast_1d(space.n).tolist()}
    return space_to_dict(space)


def _space_from_plain(desc: Mapping[str, Any]) -> spaces.Space:
    if desc.get("type") == "MultiDiscrete":
        return spaces.MultiDiscrete(np.asarray(desc["nvec"], dtype=np.int64))
    if desc.get("type") == "MultiBinary":
        n = list(desc["n"])
        return spaces.MultiBinary(n[0] if len(n) == 1 else n)
    return space_from_dict(desc)


# ------------------------------------------------------------------------- logging, callbacks


def _make_step_callback(step_callback: StepCallback | None) -> Any:
    from stable_baselines3.common.callbacks import BaseCallback

    class _StepCallbackAdapter(BaseCallback):
        """Calls our ``StepCallback`` after every vectorised env step; False stops SB3."""

        def _on_step(self) -> bool:
            if step_callback is None:
                return True
            return bool(step_callback(int(self.num_timesteps)))

    return _StepCallbackAdapter()


def _make_logger(
    tensorboard_dir: str | Path | None, writer: ScalarWriter | None, verbose: int
) -> Any:
    from stable_baselines3.common.logger import (
        HumanOutputFormat,
        KVWriter,
        Logger,
        TensorBoardOutputFormat,
    )

    class _ScalarWriterFormat(KVWriter):
        """Forwards SB3's numeric key-values (its own stable names) to a ``ScalarWriter``."""

        def __init__(self, target: ScalarWriter) -> None:
            self.target = target

        def write(
            self,
            key_values: dict[str, Any],
            key_excluded: dict[str, tuple[str, ...]],
            step: int = 0,
        ) -> None:
            for key, value in key_values.items():
                excluded = key_excluded.get(key) or ()
                if "tensorboard" in excluded:
                    continue  # SB3 marks some entries (e.g. time/time_elapsed) as not for TB
                if isinstance(value, torch.Tensor) and value.numel() == 1:
                    value = value.item()
                if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
                    value, bool
                ):
                    self.target.add_scalar(key, float(value), int(step))

        def close(self) -> None:
            pass

    formats: list[Any] = []
    if tensorboard_dir is not None:
        Path(tensorboard_dir).mkdir(parents=True, exist_ok=True)
        formats.append(TensorBoardOutputFormat(str(tensorboard_dir)))
    if writer is not None:
        formats.append(_ScalarWriterFormat(writer))
    if verbose > 0:
        import sys

        formats.append(HumanOutputFormat(sys.stdout))
    return Logger(
        folder=None if tensorboard_dir is None else str(tensorboard_dir), output_formats=formats
    )


# ------------------------------------------------------------------------------- the adapter


class SB3Agent(Learner):
    """A Stable-Baselines3 / sb3-contrib algorithm as a ``Learner``.

    Args:
        algo: a name in ``ALGORITHMS`` (``PPO``, ``SAC``, ``TD3``, ``A2C``, ``DQN``,
            ``MaskablePPO``, ``RecurrentPPO``, ``TQC``, ``QRDQN`` ...).
        observation_space: the env's observation space (or give ``env``).
        action_space: the env's action space (or give ``env``).
        env: an env to take the spaces from; it is not kept (``learn`` gets the training env).
        policy: SB3 policy alias; ``"auto"`` picks ``MultiInputPolicy`` (``MultiInputLstmPolicy``
            for RecurrentPPO) for a Dict observation space and ``MlpPolicy`` (``MlpLstmPolicy``)
            otherwise.
        policy_kwargs: SB3 ``policy_kwargs`` as plain data (class names as strings).
        algo_kwargs: the algorithm's keyword arguments as plain data (``learning_rate``,
            ``n_steps``, ``buffer_size`` ...); ``seed`` and ``device`` found here override the
            arguments below (so a config's ``params`` block can carry them).
        seed: seeds SB3 (Python, NumPy, torch, action space) and, at the first ``learn``, the env.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``.
        tensorboard_dir: directory for SB3's TensorBoard event files (None: no TB files).
        log_interval: SB3's ``log_interval`` (iterations for on-policy, episodes for off-policy).
        verbose: 1 also prints SB3's table to stdout.

    Acting: ``act(obs, deterministic, action_masks=None, episode_start=None)``. MaskablePPO
    uses ``action_masks`` (True = allowed); without masks every action is allowed. RecurrentPPO
    keeps its LSTM state between ``act`` calls: the first call after construction, ``load`` or
    ``reset_state()`` starts from a zero state; afterwards pass ``episode_start=True`` (or call
    ``reset_state()``) on the first observation of every new episode, as SB3's ``predict`` expects.
    Changing the batch size also starts from a zero state.

    Persisted by ``save``: algorithm name, policy alias, policy and algorithm kwargs, seed, both
    spaces, and the policy's ``state_dict`` (all networks acting needs, including critics and
    target networks inside the SB3 policy). Not persisted: optimiser state, counters, replay
    buffer, the recurrent state.

    Persisted by ``save_checkpoint``: the same plus every state dict SB3 itself saves
    (``get_parameters``: policy and optimisers), its extra tensors (SAC's ``log_ent_coef``),
    ``num_timesteps``, update / episode / call counters, the exploration rate, the recent episode
    statistics, the global Python / NumPy / torch RNG states and the action space's RNG, and with
    ``include_buffer=True`` the replay buffer arrays of off-policy algorithms. Not persisted: the
    env and SB3's ``_last_obs`` (training resumes at a fresh ``reset``, as after SB3's own
    ``load``), an on-policy rollout in progress (a resumed PPO starts a fresh rollout), and
    ``VecNormalize`` statistics (the adapter does not use ``VecNormalize``).
    """

    def __init__(
        self,
        algo: str,
        observation_space: spaces.Space | None = None,
        action_space: spaces.Space | None = None,
        env: gym.Env | None = None,
        policy: str = "auto",
        policy_kwargs: Mapping[str, Any] | None = None,
        algo_kwargs: Mapping[str, Any] | None = None,
        seed: int = 0,
        device: str = "auto",
        tensorboard_dir: str | Path | None = None,
        log_interval: int = 1,
        verbose: int = 0,
    ) -> None:
        if env is not None:
            observation_space = observation_space or env.observation_space
            action_space = action_space or env.action_space
        if observation_space is None or action_space is None:
            raise ConfigError("SB3Agent: give observation_space and action_space, or an env")
        self.algo = str(algo)
        self.algorithm_class = _algorithm_class(self.algo)
        self.observation_space = observation_space
        self.action_space = action_space
        self.policy_name = self._pick_policy(policy, observation_space)
        algo_kwargs = dict(algo_kwargs or {})
        # A config's params block may carry the run's seed and device (agents/registry.py fills
        # them in); they are SB3Agent arguments, not algorithm kwargs, and take precedence.
        seed = int(algo_kwargs.pop("seed", seed))
        device = str(algo_kwargs.pop("device", device))
        self.policy_kwargs = _plain_policy_kwargs(policy_kwargs)
        self.algo_kwargs = _plain_algo_kwargs(algo_kwargs)
        self.seed = seed
        self.device = get_device(device)
        self.tensorboard_dir = None if tensorboard_dir is None else Path(tensorboard_dir)
        self.log_interval = int(log_interval)
        self.verbose = int(verbose)
        self.model = self._build_model()
        self._attached_env: gym.Env | None = None
        self._env_seeded = False
        self._recurrent_state: tuple[np.ndarray, ...] | None = None

    # --- construction ------------------------------------------------------------------------

    def _pick_policy(self, policy: str, observation_space: spaces.Space) -> str:
        aliases = getattr(self.algorithm_class, "policy_aliases", {})
        if policy != "auto":
            if policy not in aliases:
                raise ConfigError(
                    f"SB3Agent policy {policy!r}: {self.algo} knows {sorted(aliases)}"
                )
            return policy
        is_dict = isinstance(observation_space, spaces.Dict)
        candidates = (
            ["MultiInputPolicy", "MultiInputLstmPolicy"]
            if is_dict
            else ["MlpPolicy", "MlpLstmPolicy"]
        )
        for name in candidates:
            if name in aliases:
                return name
        raise ConfigError(
            f"SB3Agent: {self.algo} has no policy for a "
            f"{'Dict' if is_dict else type(observation_space).__name__} observation space "
            f"(aliases: {sorted(aliases)})"
        )

    def _build_model(self) -> Any:
        """Build the SB3 model on a spaces-only placeholder env (``learn`` attaches the real one).

        Building through SB3's normal constructor (rather than ``_init_setup_model=False``) keeps
        SB3's own checks and setup, e.g. SAC's ``target_entropy="auto"`` reads the env's action
        space. The placeholder is never reset or stepped.
        """
        placeholder = _SpacesOnlyEnv(self.observation_space, self.action_space)
        try:
            return self.algorithm_class(
                policy=self.policy_name,
                env=placeholder,
                policy_kwargs=_resolve_policy_kwargs(self.policy_kwargs),
                seed=self.seed,
                device=self.device,
                verbose=self.verbose,
                **_resolve_algo_kwargs(self.algo_kwargs, self.action_space),
            )
        except AssertionError as exc:  # SB3 asserts on unsupported spaces
            raise ConfigError(f"SB3Agent: {self.algo} does not support this env: {exc}") from exc
        except TypeError as exc:  # an unknown keyword argument
            raise ConfigError(f"SB3Agent: {self.algo} rejected its arguments: {exc}") from exc

    @property  # type: ignore[override]
    def num_timesteps(self) -> int:
        """Environment steps trained so far (SB3's counter)."""
        return int(self.model.num_timesteps)

    # --- acting ------------------------------------------------------------------------------

    @property
    def uses_action_masks(self) -> bool:
        """Whether ``act`` takes ``action_masks`` (only MaskablePPO's policy understands them)."""
        return self.algo == "MaskablePPO"

    @property
    def is_recurrent(self) -> bool:
        """True for RecurrentPPO-style policies that carry an LSTM state."""
        return hasattr(self.model.policy, "lstm_actor")

    def reset_state(self) -> None:
        """Forget the recurrent state: the next ``act`` starts a new episode from zeros."""
        self._recurrent_state = None

    def act(
        self,
        obs: Any,
        deterministic: bool = True,
        action_masks: Any = None,
        episode_start: Any = None,
    ) -> np.ndarray:
        """Action(s) for one observation or a batch (SB3's ``predict``).

        Args:
            obs: one observation or a batch (leading dimension), arrays or a dict of arrays.
            deterministic: the mode of the action distribution instead of a sample.
            action_masks: for MaskablePPO, bool ``(n,)`` or ``(batch, n)``; True = allowed.
            episode_start: for RecurrentPPO, bool (or one per row) marking a new episode.
        """
        if action_masks is not None and self.algo != "MaskablePPO":
            # Only MaskablePPO's predict understands masks; refusing beats silently ignoring.
            raise ConfigError(f"SB3Agent.act: action_masks given but {self.algo} ignores masks")
        if self.is_recurrent:
            n = self._batch_size(obs)
            if self._recurrent_state is not None and self._recurrent_state[0].shape[1] != n:
                self._recurrent_state = None
            if episode_start is None:
                episode_start = self._recurrent_state is None
            starts = np.broadcast_to(np.asarray(episode_start, dtype=bool), (n,)).copy()
            action, self._recurrent_state = self.model.predict(
                obs, state=self._recurrent_state, episode_start=starts, deterministic=deterministic
            )
            return np.asarray(action)
        if action_masks is not None:
            action, _ = self.model.predict(
                obs, deterministic=deterministic, action_masks=np.asarray(action_masks, dtype=bool)
            )
        else:
            action, _ = self.model.predict(obs, deterministic=deterministic)
        return np.asarray(action)

    def act_with_confidence(
        self,
        obs: Any,
        action_masks: Any = None,
        episode_start: Any = None,
        temperature: float = 1.0,
    ) -> tuple[np.ndarray, float]:
        """Deterministic action for one observation and a confidence in ``[0, 1]``.

        The action is exactly ``act(obs, deterministic=True, ...)`` (RecurrentPPO's LSTM state
        advances as in ``act``); the confidence comes from the same policy on the same input
        (see :func:`policy_confidence` for the measure of each algorithm family).

        Args:
            obs: one observation (no batch dimension).
            action_masks: MaskablePPO's mask of allowed actions.
            episode_start: RecurrentPPO: True on the first observation of an episode.
            temperature: softmax temperature over Q-values (DQN, QRDQN), in reward units.
        """
        state_before = self._recurrent_state if self.is_recurrent else None
        start = state_before is None if episode_start is None else bool(episode_start)
        action = self.act(
            obs, deterministic=True, action_masks=action_masks, episode_start=episode_start
        )
        confidence = policy_confidence(
            self.model,
            obs,
            np.asarray(action),
            action_masks=action_masks,
            lstm_state=state_before,
            episode_start=start,
            temperature=temperature,
        )
        return np.asarray(action), confidence

    def _batch_size(self, obs: Any) -> int:
        space = self.observation_space
        if isinstance(space, spaces.Dict):
            key = next(iter(space.spaces))
            arr, shape = np.asarray(obs[key]), space.spaces[key].shape
        else:
            arr, shape = np.asarray(obs), space.shape
        return int(arr.shape[0]) if arr.ndim == len(shape) + 1 else 1

    # --- learning ----------------------------------------------------------------------------

    def learn(
        self,
        env: gym.Env,
        total_timesteps: int,
        callback: StepCallback | None = None,
        writer: ScalarWriter | None = None,
    ) -> None:
        """Run SB3's ``learn`` until ``num_timesteps`` reaches ``total_timesteps``.

        The env is wrapped by SB3 (``Monitor`` + ``DummyVecEnv``) and reset when it is first
        attached; passing the same env again continues its episodes. On-policy algorithms
        collect whole rollouts, so they can overshoot ``total_timesteps`` by up to ``n_steps - 1``.

        Args:
            env: the training env (a Gymnasium env, or an SB3 VecEnv with one env).
            total_timesteps: absolute number of env steps to reach.
            callback: called after every env step with ``num_timesteps``; False stops training.
            writer: receives SB3's logged scalars under SB3's names.
        """
        if env is not self._attached_env:
            self.model.set_env(env, force_reset=True)
            self._attached_env = env
            if not self._env_seeded:
                self.model.get_env().seed(self.seed)  # used at the next reset only
                self._env_seeded = True
        remaining = int(total_timesteps) - self.num_timesteps
        if remaining <= 0:
            return
        self.model.set_logger(_make_logger(self.tensorboard_dir, writer, self.verbose))
        self.model.learn(
            total_timesteps=remaining,
            callback=_make_step_callback(callback),
            log_interval=self.log_interval,
            reset_num_timesteps=False,
            progress_bar=False,
        )

    # --- persistence -------------------------------------------------------------------------

    def _config_state(self) -> dict[str, Any]:
        return {
            "algo": self.algo,
            "policy": self.policy_name,
            "policy_kwargs": self.policy_kwargs,
            "algo_kwargs": self.algo_kwargs,
            "seed": self.seed,
            "log_interval": self.log_interval,
            "observation_space": _space_to_plain(self.observation_space),
            "action_space": _space_to_plain(self.action_space),
        }

    def save(self, path: str | Path) -> None:
        """Write the plain config and the policy weights atomically (no pickled objects)."""
        state = {"format": _FORMAT, "version": _FORMAT_VERSION, **self._config_state()}
        state["policy_state"] = self.model.policy.state_dict()
        atomic_torch_save(state, path)

    @classmethod
    def _from_config(cls, state: Mapping[str, Any], path: str | Path, device: str) -> SB3Agent:
        try:
            return cls(
                algo=state["algo"],
                observation_space=_space_from_plain(state["observation_space"]),
                action_space=_space_from_plain(state["action_space"]),
                policy=state["policy"],
                policy_kwargs=state["policy_kwargs"],
                algo_kwargs=state["algo_kwargs"],
                seed=int(state["seed"]),
                device=device,
                log_interval=int(state.get("log_interval", 1)),
            )
        except KeyError as exc:
            raise DataError(f"{path}: SB3Agent file is missing field {exc}") from exc

    @staticmethod
    def _check_format(state: Any, path: str | Path, expected: str) -> None:
        if not isinstance(state, Mapping) or state.get("format") != expected:
            found = state.get("format") if isinstance(state, Mapping) else type(state).__name__
            raise DataError(
                f"{path}: not an SB3Agent file (format={found!r}, expected {expected!r}); SB3 "
                ".zip files are not loaded here because they unpickle code"
            )
        if state.get("version") != _FORMAT_VERSION:
            raise DataError(
                f"{path}: format version {state.get('version')!r}, expected {_FORMAT_VERSION}"
            )

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> SB3Agent:
        """Rebuild an agent written by ``save``; nothing in the file is executed."""
        state = safe_torch_load(path, device="cpu")
        cls._check_format(state, path, _FORMAT)
        agent = cls._from_config(state, path, device)
        agent.model.policy.load_state_dict(state["policy_state"])
        agent.model.policy.set_training_mode(False)
        return agent

    def save_checkpoint(self, path: str | Path, include_buffer: bool = False) -> None:
        """Write the full training state (see the class docstring) atomically, without pickle."""
        model = self.model
        _, variable_names = model._get_torch_save_params()
        state: dict[str, Any] = {
            "format": _CHECKPOINT_FORMAT,
            "version": _FORMAT_VERSION,
            **self._config_state(),
            "parameters": model.get_parameters(),
            "variables": {
                name: _getattr_path(model, name).detach().cpu() for name in variable_names
            },
            "counters": {
                "num_timesteps": int(model.num_timesteps),
                "n_updates": int(getattr(model, "_n_updates", 0)),
                "episode_num": int(getattr(model, "_episode_num", 0)),
                "n_calls": int(getattr(model, "_n_calls", 0)),
                "exploration_rate": float(getattr(model, "exploration_rate", 0.0)),
                "progress_remaining": float(model._current_progress_remaining),
                "env_seeded": self._env_seeded,
            },
            "episode_infos": [
                {k: float(v) for k, v in info.items() if isinstance(v, (int, float, np.number))}
                for info in (model.ep_info_buffer or [])
            ],
            "rng": {
                "python": _python_rng_to_plain(random.getstate()),
                # SB3 seeds and draws from NumPy's legacy global RNG, so that is what to save.
                "numpy": _numpy_global_rng_to_plain(np.random.get_state()),  # noqa: NPY002
                "torch": torch.get_rng_state(),
                "action_space": _stringify_ints(model.action_space.np_random.bit_generator.state),
            },
            "replay_buffer": _buffer_to_plain(model) if include_buffer else None,
        }
        atomic_torch_save(state, path)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a ``save_checkpoint`` file into this agent (same algorithm and spaces)."""
        state = safe_torch_load(path, device="cpu")
        self._check_format(state, path, _CHECKPOINT_FORMAT)
        if state["algo"] != self.algo:
            raise DataError(
                f"{path}: checkpoint is for {state['algo']!r}, this agent is {self.algo!r}"
            )
        if (
            _space_from_plain(state["observation_space"]) != self.observation_space
            or _space_from_plain(state["action_space"]) != self.action_space
        ):
            raise DataError(f"{path}: checkpoint spaces differ from this agent's spaces")
        # Rebuild from the stored config so hyperparameters match the run being resumed.
        fresh = self._from_config(state, path, str(self.device))
        self.policy_name, self.policy_kwargs = fresh.policy_name, fresh.policy_kwargs
        self.algo_kwargs, self.seed, self.model = fresh.algo_kwargs, fresh.seed, fresh.model
        model = self.model
        model.set_parameters(state["parameters"], exact_match=True, device=self.device)
        for name, value in state["variables"].items():
            _getattr_path(model, name).data.copy_(value.to(self.device))
        counters = state["counters"]
        model.num_timesteps = int(counters["num_timesteps"])
        model._n_updates = int(counters["n_updates"])
        model._episode_num = int(counters["episode_num"])
        if hasattr(model, "_n_calls"):
            model._n_calls = int(counters["n_calls"])
        if hasattr(model, "exploration_rate"):
            model.exploration_rate = float(counters["exploration_rate"])
        model._current_progress_remaining = float(counters["progress_remaining"])
        model.ep_info_buffer = deque(state["episode_infos"], maxlen=model._stats_window_size)
        model.ep_success_buffer = deque(maxlen=model._stats_window_size)
        self._env_seeded = bool(counters["env_seeded"])
        rng = state["rng"]
        random.setstate(_python_rng_from_plain(rng["python"]))
        np.random.set_state(_numpy_global_rng_from_plain(rng["numpy"]))  # noqa: NPY002
        torch.set_rng_state(rng["torch"])
        model.action_space.np_random.bit_generator.state = _intify(rng["action_space"])
        if state.get("replay_buffer") is not None:
            _buffer_from_plain(model, state["replay_buffer"], path)
        self._attached_env = None  # the next learn attaches and resets the env
        self._recurrent_state = None


# --- confidence ---------------------------------------------------------------------------------

# Noise scale (unit action space) of deterministic actors without their own: SB3's DDPG trains
# with target_policy_noise = 0 and no default exploration noise, and 0.1 is the Gaussian
# exploration sigma of the SB3 / rl-zoo TD3 and DDPG recipes (Fujimoto et al. 2018 use 0.1).
DETERMINISTIC_FALLBACK_SIGMA = 0.1


def _sign_agreement(mean: torch.Tensor, std: torch.Tensor) -> float:
    """``2 * Phi(z) - 1`` with ``z = mean_i(|mu_i| / sigma_i)``: the Gaussian's mass on the mean's
    side of zero, rescaled to ``[0, 1]`` (the measure of our SAC runner, agents/runner/policy)."""
    import math

    z = float((mean.abs() / std.clamp_min(1e-12)).mean().item())
    return float(math.erf(z / math.sqrt(2.0)))


def _deterministic_sigma(model: Any) -> float:
    """The noise a deterministic actor's critic is trained around (TD3's target policy
    smoothing, when active: SB3's DDPG keeps a ``target_policy_noise`` but clips it to 0 with
    ``target_noise_clip = 0``), else its exploration noise's sigma, else
    ``DETERMINISTIC_FALLBACK_SIGMA``."""
    sigma = float(getattr(model, "target_policy_noise", 0.0) or 0.0)
    if sigma > 0 and float(getattr(model, "target_noise_clip", 0.0) or 0.0) > 0:
        return sigma
    noise = getattr(model, "action_noise", None)
    raw = getattr(noise, "_sigma", None)
    if raw is not None and np.all(np.asarray(raw) > 0):
        return float(np.mean(raw))
    return DETERMINISTIC_FALLBACK_SIGMA


def policy_confidence(
    model: Any,
    obs: Any,
    action: np.ndarray,
    action_masks: Any = None,
    lstm_state: Any = None,
    episode_start: bool = True,
    temperature: float = 1.0,
) -> float:
    """Confidence in ``[0, 1]`` of an SB3 policy's deterministic ``action`` for one ``obs``.

    * Categorical policies (PPO, A2C, TRPO, MaskablePPO with the masks applied, RecurrentPPO):
      the probability of the chosen action.
    * Diagonal Gaussian policies (PPO, A2C, TRPO, RecurrentPPO; SAC, TQC and CrossQ through
      their actor's mean and log-std before the tanh): ``2 * Phi(mean_i |mu_i| / sigma_i) - 1``,
      the probability that a sampled action has the mean's sign, per dimension averaged in z.
    * Q-value policies: DQN ``softmax(Q / temperature)`` of the chosen action; QRDQN the same
      with Q the mean over quantiles.
    * Deterministic actors (TD3, DDPG): no distribution, so the same sign measure with the
      actor's unit action ``u = tanh(...)`` in ``[-1, 1]`` as the mean and a fixed, policy-free
      sigma: TD3's ``target_policy_noise`` (0.2 by default; the critic is trained to value
      actions within that noise alike, Fujimoto et al. 2018; DDPG has no smoothing), else the
      exploration noise's
      sigma, else ``DETERMINISTIC_FALLBACK_SIGMA`` (0.1). 0 at the centre of the action box, near
      1 when the action is several sigmas towards a bound.
    * RecurrentPPO: the distribution at the LSTM state *before* this observation
      (``lstm_state`` as ``act`` keeps it, None = zeros) with ``episode_start``.

    Raises:
        ConfigError: a policy of none of these kinds.
    """
    policy = model.policy
    with torch.inference_mode():
        tensor, _ = policy.obs_to_tensor(obs)
        if hasattr(policy, "lstm_actor"):
            if lstm_state is None:
                # predict()'s zero state: (layers, batch, hidden) per hidden and cell state.
                zeros = np.zeros(policy.lstm_hidden_state_shape, dtype=np.float32)
                lstm_state = (zeros, zeros)
            states = tuple(
                torch.as_tensor(np.asarray(s), dtype=torch.float32, device=policy.device)
                for s in lstm_state
            )
            starts = torch.tensor([float(episode_start)], device=policy.device)
            dist, _ = policy.get_distribution(tensor, states, starts)
        elif hasattr(policy, "get_distribution"):
            if action_masks is not None:
                masks = np.asarray(action_masks, dtype=bool).reshape(1, -1)
                dist = policy.get_distribution(tensor, action_masks=masks)
            else:
                dist = policy.get_distribution(tensor)
        elif hasattr(policy, "quantile_net"):  # QRDQN: (batch, quantiles, actions)
            q = policy.quantile_net(tensor).mean(dim=1)
            return _softmax_of_chosen(q, action, temperature)
        elif hasattr(policy, "q_net"):  # DQN
            return _softmax_of_chosen(policy.q_net(tensor), action, temperature)
        elif hasattr(getattr(policy, "actor", None), "get_action_dist_params"):  # SAC, TQC
            mean, log_std, _ = policy.actor.get_action_dist_params(tensor)
            return _sign_agreement(mean, log_std.exp())
        elif getattr(policy, "actor", None) is not None:  # TD3, DDPG: tanh-squashed actor
            unit = policy.actor(tensor)
            return _sign_agreement(unit, torch.full_like(unit, _deterministic_sigma(model)))
        else:
            raise ConfigError(f"no confidence measure for policy {type(policy).__name__}")
        inner = dist.distribution
        if isinstance(inner, torch.distributions.Categorical):
            chosen = int(np.asarray(action).reshape(-1)[0])
            return float(inner.probs.reshape(-1, inner.probs.shape[-1])[0, chosen].item())
        if isinstance(inner, torch.distributions.Normal):
            return _sign_agreement(inner.mean, inner.stddev)
    raise ConfigError(f"no confidence measure for distribution {type(inner).__name__}")


def _softmax_of_chosen(q: torch.Tensor, action: np.ndarray, temperature: float) -> float:
    if not temperature > 0:
        raise ConfigError(f"confidence temperature must be > 0, got {temperature}")
    probs = torch.softmax(q.reshape(1, -1).double() / temperature, dim=1)
    return float(probs[0, int(np.asarray(action).reshape(-1)[0])].item())


class _SpacesOnlyEnv(gym.Env):
    """Carries the spaces SB3 needs to build a model; training always uses the real env."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space) -> None:
        self.observation_space = observation_space
        self.action_space = action_space

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[Any, dict]:
        raise RuntimeError("SB3Agent: the placeholder env cannot run; pass an env to learn()")

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        raise RuntimeError("SB3Agent: the placeholder env cannot run; pass an env to learn()")


# ------------------------------------------------------------------ checkpoint helper functions


def _getattr_path(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


_BUFFER_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def _buffer_to_plain(model: Any) -> dict[str, Any] | None:
    """An SB3 (Dict)ReplayBuffer's arrays as tensors; None for on-policy algorithms."""
    buffer = getattr(model, "replay_buffer", None)
    if buffer is None:
        return None
    size = buffer.buffer_size if buffer.full else buffer.pos
    out: dict[str, Any] = {"pos": int(buffer.pos), "full": bool(buffer.full), "arrays": {}}
    for name in _BUFFER_ARRAYS:
        value = getattr(buffer, name, None)
        if value is None:
            continue  # next_observations is None with optimize_memory_usage
        if isinstance(value, Mapping):
            out["arrays"][name] = {
                k: torch.from_numpy(np.array(v[:size])) for k, v in value.items()
            }
        else:
            out["arrays"][name] = torch.from_numpy(np.array(value[:size]))
    return out


def _buffer_from_plain(model: Any, state: Mapping[str, Any], path: str | Path) -> None:
    buffer = getattr(model, "replay_buffer", None)
    if buffer is None:
        raise DataError(
            f"{path}: checkpoint holds a replay buffer but {type(model).__name__} has none"
        )
    for name, stored in state["arrays"].items():
        target = getattr(buffer, name)
        pairs = (
            [(target[k], stored[k]) for k in stored]
            if isinstance(target, Mapping)
            else [(target, stored)]
        )
        for array, tensor in pairs:
            values = tensor.numpy()
            if values.shape[1:] != array.shape[1:] or values.shape[0] > array.shape[0]:
                raise DataError(
                    f"{path}: replay buffer field {name!r} has shape {tuple(values.shape)}, "
                    f"which does not fit {array.shape}"
                )
            array[: values.shape[0]] = values
    buffer.pos, buffer.full = int(state["pos"]), bool(state["full"])


def _python_rng_to_plain(state: tuple) -> list[Any]:
    version, internal, gauss = state
    return [version, torch.tensor(internal, dtype=torch.int64), gauss]


def _python_rng_from_plain(state: list[Any]) -> tuple:
    version, internal, gauss = state
    return (version, tuple(int(v) for v in internal.tolist()), gauss)


def _numpy_global_rng_to_plain(state: tuple) -> list[Any]:
    name, keys, pos, has_gauss, cached = state
    return [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]


def _numpy_global_rng_from_plain(state: list[Any]) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return (name, keys.numpy().astype(np.uint32), pos, has_gauss, cached)


def _stringify_ints(value: Any) -> Any:
    """PCG64's 128-bit integers as strings, so the state stays exact in any plain-data file."""
    if isinstance(value, Mapping):
        return {k: _stringify_ints(v) for k, v in value.items()}
    if isinstance(value, int) and not isinstance(value, bool):
        return {"__int__": str(value)}
    return value


def _intify(value: Any) -> Any:
    if isinstance(value, Mapping):
        if set(value) == {"__int__"}:
            return int(value["__int__"])
        return {k: _intify(v) for k, v in value.items()}
    return value
