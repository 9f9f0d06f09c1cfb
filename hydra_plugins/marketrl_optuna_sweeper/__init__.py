"""``hydra/sweeper=optuna``: a Hydra sweeper on Optuna 5, shipped in this repository.

The published ``hydra-optuna-sweeper`` 1.3.0 pins ``optuna<3`` and would downgrade our Optuna (see
DOMAIN.md, Dependency facts), so this package provides the same command line on the Optuna we
have::

    python scripts/train_agent.py -m hydra/sweeper=optuna agent=sac env=pendulum \\
        hydra.sweeper.n_trials=20 hydra.sweeper.sampler.seed=0 total_timesteps=20000

Each trial is one job launched through ``hydra/launcher`` (the basic in-process launcher unless
another is configured), so a trial writes the usual run directory under ``hydra.sweep.dir``
(``<sweep dir>/<env>/<agent>/seed<seed>_<job number>``). The objective is what the task function
returns: ``scripts/train_agent.py`` returns the best validation score of the run.

Configuration (``hydra.sweeper.*``, see ``config.py``):

- ``n_trials`` (20), ``direction`` (``maximize`` | ``minimize``), ``study_name``, ``storage``
  (``null`` or an Optuna URL such as ``sqlite:///study.db``; a named study in a storage is
  continued, and ``n_trials`` more trials are run), ``n_jobs`` (trials per launcher batch; they
  run in parallel only with a parallel launcher), ``sampler.name`` (``tpe`` | ``random``) and
  ``sampler.seed``.
- ``params``: the search space in Hydra's override grammar, as in the official plugin::

      hydra:
        sweeper:
          params:
            agent.params.learning_rate: tag(log, interval(1e-4, 3e-3))
            agent.params.batch_size: choice(64, 128, 256)
            agent.params.gradient_steps: range(1, 4)
            agent.params.tau: 0.01          # a plain value is fixed for every trial

  ``choice(...)`` / ``a,b`` -> categorical; ``interval(lo, hi)`` -> float, int when both ends
  are ints (``int(interval(1, 8))``), log-scaled with ``tag(log, ...)``; ``range(start, stop,
  step)`` -> int or float with that step; ``shuffle(...)`` -> categorical.
- Sweeps on the command line (``agent.params.tau=interval(0.002,0.02)``, ``seed=0,1``) are search
  dimensions too, and plain command-line values are fixed for every trial; a key given in both
  places takes the command-line form. (Adding to ``params`` from the command line needs ``+`` and
  quotes, ``'+hydra.sweeper.params.agent.params.tau="interval(0.002,0.02)"'``, because Hydra
  refuses sweeps over its own config; the plain sweep override above is simpler.)
- When neither ``params`` nor the command line holds a sweep, the search space is the composed
  agent config's ``search_space`` (``configs/agent/<name>.yaml``), the spec format
  ``scripts/tune_agent.py`` reads, drawn with the same ``agents.tuning.suggest``. Paths fixed on
  the command line are left out of it.

At the end, ``<sweep dir>/optimization_results.yaml`` is written atomically: ``best_params`` and
``best_value`` (the official plugin's keys), the best trial's overrides and run directory, and
every trial of the study (number, state, value, params, overrides, run directory, error). A trial
whose job raises, exits (``sys.exit`` under the in-process launcher), fails to compose, or returns
a non-number or non-finite score is recorded as FAIL and the sweep goes on; the sweep exits with
an error only if no trial completed (after writing the file).

Differences from the official ``hydra-optuna-sweeper``: Optuna >= 3 (we run 5); only the ``tpe``
and ``random`` samplers, chosen by name rather than by a ``hydra/sweeper/sampler`` config group;
single objective only (no list of directions); no ``custom_search_space`` hook; the agent's
``search_space`` fallback; ``range(start, stop)`` excludes ``stop`` as Hydra's basic sweeper does
(the official plugin includes it); failed trials do not abort the sweep. Pruning is not available
here (a trial runs as a separate job with no channel back to the study while it trains); for
median pruning on validation evaluations use ``scripts/tune_agent.py``. Both this plugin and the
official one register ``hydra/sweeper=optuna``: do not install both.

Discovery: Hydra imports every public module under the ``hydra_plugins`` namespace package found
on ``sys.path`` (so there is no ``hydra_plugins/__init__.py``). ``config.py`` (the ConfigStore
entry) and ``optuna_sweeper.py`` (the Sweeper class) import only Hydra; Optuna, torch and our
packages load when the sweeper is used (``_impl.py`` and ``_search_space.py``, which the scan
skips because of their leading underscore).
"""
