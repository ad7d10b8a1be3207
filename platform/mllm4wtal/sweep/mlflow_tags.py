"""The MLflow tag names of the platform's runs, spelled once.

A sweep or a study has one *parent* run and one *child* run per Ray trial
(``sweep.tracker``); ``report.collect`` reads them back by these names.
"""

from __future__ import annotations

# structure: which run is what
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: a child names its parent (nested in the UI)
ROLE_TAG = "mllm4wtal.role"  # "parent" or "trial"
ROLE_PARENT = "parent"
ROLE_TRIAL = "trial"
TRIAL_TAG = "trial_id"  # a child's Ray trial id
TRIAL_NUMBER_TAG = "trial_number"  # Ray's count of the trial (creation order), in its run name
KIND_TAG = "mllm4wtal.kind"  # "ablation" on a study's runs
KIND_ABLATION = "ablation"

# every run: where it came from
SEED_TAG = "seed"  # train.seed of the run's config
GIT_COMMIT_TAG = "git_commit"
GIT_DIRTY_TAG = "git_dirty"  # "true" when the code differed from that commit, else "false"
MLFLOW_GIT_COMMIT_TAG = "mlflow.source.git.commit"
VERSION_TAG_PREFIX = "version."  # version.torch, version.ray, ...

# a child's place in the cluster, as its trial last reported it (sweep.trainable.placement)
NODE_ID_TAG = "ray.node_id"
NODE_IP_TAG = "ray.node_ip"
GPU_IDS_TAG = "ray.gpu_ids"  # the GPUs Ray assigned the trial ("0,1"), "none" without one
DEVICE_TAG = "device"  # what it trained on: "cuda" or "cpu" (no CUDA on a fake-GPU node)

# a child's end (sweep.tracker.SweepTracker.end_trial)
PRUNED_TAG = "pruned"  # "true" / "false"
PRUNED_AT_TAG = "pruned_at_iteration"
LAST_ITERATION_TAG = "last_iteration"
ERROR_TAG = "error"
OUTCOME_TAG = "outcome"  # how it ended, for filters: tags.outcome = 'pruned'
OUTCOMES = ("finished", "pruned", "failed", "killed")
END_TAGS = (PRUNED_TAG, PRUNED_AT_TAG, LAST_ITERATION_TAG, ERROR_TAG, OUTCOME_TAG)
PARAM_CONFLICTS_TAG = "param_conflicts"

# a sweep's parent
SWEEP_TAG = "sweep"  # the sweep's name
SEARCH_SPACE_TAG = "search_space"  # the search-space file
SWEEP_DIR_TAG = "sweep_dir"  # its experiment directory (holds optuna.db)
SWEEP_METRIC_TAG = "sweep_metric"  # "<metric> (<mode>)", set by the summary
BEST_TRIAL_TAG = "best_trial_id"
SCORE_TAG = "score_rule"  # the sweep's score: "best" (best evaluation) or "last"
SELECT_SPLIT_TAG = "select_split"  # what chose, in words (data.splits.describe)

# a study (sweep.ablate): its children, then its parent
STUDY_TAG = "study"  # the study's name (parent and children)
VARIANT_TAG = "variant"
CONFIG_TAG = "config_hash"
STUDY_FILE_TAG = "study_file"
N_VARIANTS_TAG = "n_variants"
SEEDS_TAG = "seeds"
REFERENCE_TAG = "reference"
STUDY_METRIC_TAG = "study_metric"
N_CELLS_TAG = "n_cells"
N_FINISHED_CELLS_TAG = "n_finished_cells"

# the experiment, as MLflow's UI reads it (sweep.mlflow_view)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # UIs without MLflow 3.17's GenAI switch read it
KIND_TRAINING = "custom_model_development"  # its "model training" kind: opens on the runs
SAVED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # + view id: a saved view of the runs table
