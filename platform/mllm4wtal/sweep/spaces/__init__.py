"""Search-space files of the sweep platform: reading, complete validation, Optuna glue.

A search-space YAML says *what* a sweep searches and *how*; this package reads it, checks all
of it before anything runs, and turns it into the pieces a sweep runner needs. It never
starts (nor imports) Ray. One concern per module:

- ``search_space``: :func:`load_search_space` -> :class:`SearchSpaceFile` (the resolved base
  :class:`~mllm4wtal.config.Config`, one ``Param`` per searched key, the run settings).
- ``optuna_space``: ``Param`` (an Optuna distribution, checked by ``optuna.distributions``),
  ``suggest`` (the define-by-run body) and ``make_sampler`` (the seeded sampler).
- ``sections``: the run-setting sections as pydantic models (unknown keys refused).
- ``file_parser``: what search-space and study files (``sweep.study_file``) share: the YAML,
  the top level, overrides, the base config and the checks every trial's config passes.
- ``metrics``: ``reported_metrics`` (what a sweep may optimise) and ``metric_mode``.
- ``values``: value helpers of the messages.

Schema (read with a YAML safe loader; ``5e-4`` is read as a number, duplicate keys are an
error). Every top-level key except ``base`` and ``space`` is optional::

    name: quickstart            # experiment name, [A-Za-z0-9._-]+; default: the file's stem
    description: ...            # free text, for people
    base: synthetic             # preset (synthetic, thumos14, activitynet12) or config YAML;
                                # a relative path resolves against this file's folder
    overrides:                  # config keys -> fixed values for every trial; dotted
      train.iterations: 600     # (``train.iterations``) or nested (``train: {iterations: ..}``)
    metric: map/avg_0.1-0.7     # default: the average-mAP name of the base config's eval.tious
    mode: max                   # max | min; default: max for map/* and iteration, min for loss/*
    space:                      # dotted config key -> Optuna distribution, in suggestion order
      loss.lambda1: {type: float, low: 0.1, high: 5.0, log: true}
      ksm.topk: {type: int, low: 4, high: 16, step: 2}
      csr.contrast: {type: categorical, choices: [true, false]}
      csr.gamma1: {type: float, low: 0.0, high: 1.0, when: {csr.contrast: true}}
    points_to_evaluate:         # tried first, in order (Optuna enqueue_trial); e.g. the paper
      - {loss.lambda1: 1.5, ksm.topk: 8, csr.contrast: false}
    searcher: {sampler: tpe, seed: 0, n_startup_trials: 10, multivariate: true,
               constant_liar: true, storage: null}
    scheduler: {type: asha, grace_period: 100, reduction_factor: 3, max_t: 600}
    trials: {num_samples: 10, max_concurrent: 1, max_failures: 0}
    resources: {cpu: 1, gpu: 0}
    mlflow: {tracking_uri: null, experiment: null}
    storage: {path: null}

``space`` entries (keys: ``type``, ``low``, ``high``, ``log``, ``step``, ``choices``, ``when``):

- ``type: float`` (float config keys): ``low`` < ``high``; ``log: true`` needs ``low`` > 0 and
  no ``step``; ``step`` > 0 and ``high - low`` a multiple of it (Optuna would silently move
  ``high`` otherwise).
- ``type: int`` (int config keys): integer ``low`` < ``high``; ``log: true`` needs ``low`` >= 1
  and no ``step``; integer ``step`` >= 1 dividing ``high - low``.
- ``type: categorical`` (any scalar key; the only type for bool and str keys): ``choices``, a
  list of at least two distinct values.
- ``when: {other.key: value}`` (or ``{other.key: [v1, v2]}``, several keys = all must hold):
  the parameter is suggested only when the categorical parameter ``other.key``, listed
  *earlier* in ``space``, was suggested with one of those values; otherwise the base config's
  value stays. Conditions nest (a parent may itself be conditional).
- Bounds and choices must be valid values of the config key (its ``min``/``max``/``choices``).
  Each bound and choice is also applied alone to the base config, which must stay valid
  (cross-field rules, and what evaluation needs: ``inference.source: loc_head`` needs
  ``loc_head.enabled``, as the base config itself does) and keep reporting the metric (e.g.
  ``csr.enabled: [true, false]`` drops ``loss/rec``).
- Not searchable: list-valued keys (``eval.tious``, ...), keys that define the dataset shared
  by all trials (``data.format``, ``data.root``, ``data.feature_dim``, ``data.synthetic.*``,
  ...), and keys the sweep owns (``train.iterations``, ``train.eval_interval``,
  ``train.device``, ``train.out_dir``). A key may not be both searched and overridden.

``metric``: one of ``metrics.reported_metrics`` of the base config except ``lr``: the mAP names
(``map/<tIoU>`` per ``eval.tious`` and ``map/avg_<min>-<max>``), ``iteration``, or a DPID
loss (``loss/match``, ``loss/rec`` or one of their terms) that every evaluation report of
every trial carries; the base model's regularisers (``loss/norm``, ...) are not offered.
``map/*`` needs ``mode: max``, ``loss/*`` needs ``mode: min``.

``points_to_evaluate``: mappings of searched keys to values inside their distributions
(on the step grid, among the choices). A point may leave parameters out (the sampler then
draws them) but a conditional parameter may only appear with its condition's parameters
set so that the condition holds. ``trials.num_samples`` must cover all points.

``searcher``: ``sampler`` ``tpe`` (Optuna TPESampler: ``n_startup_trials`` random trials
first, default 10; ``multivariate`` default true, with ``group`` switched on automatically
when the space has conditionals; ``constant_liar`` default true, for concurrent trials) or
``random`` (RandomSampler, ``seed`` only). ``seed`` (default 0) seeds the sampler.
``storage``: an Optuna RDB URL (``sqlite:///...``, ``postgresql://...``) for the study, or
null for the sweep runner's default (``sweep.search``: a sqlite file in the experiment
directory). CMA-ES (needs the ``cmaes`` package, no
categorical parameters) and GP samplers are not offered.

``scheduler``: ``type: none`` (no early stopping; no other keys) or ``type: asha`` (Ray
ASHAScheduler on the reported ``iteration``, i.e. in TRAINING ITERATIONS): ``grace_period``
(default ``train.eval_interval``), ``reduction_factor`` (integer >= 2, default 3), ``max_t``
(default ``train.iterations``). Rungs sit at ``grace_period * reduction_factor**k < max_t``;
``grace_period`` must be a positive multiple of ``train.eval_interval`` (so every rung falls
on a report), ``grace_period < max_t <= train.iterations``, and ``max_t`` a multiple of
``train.eval_interval`` or equal to ``train.iterations``. Default without the key: none.

``trials``: ``num_samples`` >= 1 (trials in all, default 10), ``max_concurrent`` >= 1
(default 1), ``max_failures`` >= 0 (retries of a failed trial from its checkpoint, default 0).

``resources`` per trial: ``cpu`` (default 1) and ``gpu`` (default 0), >= 0, fractional only
below 1 (Ray's rule) with at most 4 decimals. ``gpu`` > 0 needs ``train.device`` auto or
cuda; ``train.device: cuda`` needs ``gpu`` > 0.

``mlflow``: ``tracking_uri`` (null: ``sqlite:///<storage.path>/mlflow.db``, which needs a
local storage path), ``experiment`` (null: ``name``).

``storage``: ``path`` (null: ``./sweeps``), a local folder (relative to the current working
directory, made absolute) or a URI with a scheme (``s3://...``, kept as is); the experiment
directory is ``<path>/<name>``.

Every problem raises one ``search_space.SearchSpaceError`` (a
:class:`~mllm4wtal.errors.UserError`) whose message starts with the file and the key, e.g.
``search_spaces/x.yaml: space.loss.lambdaa: unknown config key; did you mean
'loss.lambda1'?``.
"""

