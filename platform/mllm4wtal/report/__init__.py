"""Tables and plots read back from MLflow (``mllm4wtal report``), and a sweep's summary:
``collect`` reads a study's or sweep's runs, ``tables`` builds the paper-style table
(Markdown, CSV, LaTeX), ``stats`` holds the mean/std and the paired t-test over seeds,
``plots`` the mAP curves and timelines, ``sweep_plots`` a sweep's parallel coordinates and
parameter importances, ``build`` puts them together (``make_report``), and ``summary`` writes
the summary at the end of ``mllm4wtal sweep`` (``write_sweep_summary``)."""
