"""Sweeps and ablation studies on Ray Tune, Optuna and MLflow.

``spaces`` / ``study_file`` read and validate the YAML files; ``search`` builds the Optuna
searcher and the ASHA scheduler; ``trainable`` is one Ray Tune trial (one training run);
``runner`` runs a sweep and ``ablate`` a study; ``records`` holds one record per trial.
MLflow: ``mlflow_store`` (the store and its experiment), ``mlflow_names`` (legal names and
values), ``mlflow_tags`` (the tag names), ``tracker`` (the parent and child runs) and
``tune_callback`` (Ray Tune's trial events -> the tracker).
"""
