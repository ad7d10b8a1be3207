"""Tables and plots read back from MLflow (``mllm4wtal report``): ``collect`` reads a study's
or sweep's runs, ``tables`` builds the paper-style table (Markdown, CSV, LaTeX), ``stats``
holds the mean/std and the paired t-test over seeds, ``plots`` the figures, ``build`` puts
them together (``make_report``)."""
