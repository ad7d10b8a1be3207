"""``mllm4wtal describe``: ask a video-language model for the key and complete descriptions of
every (training video, labelled class) pair, and check a store of them.

For each training video and each of its labelled classes the two prompts of MLLM4WTAL,
P_key (eq. 1) and P_complete (eq. 11), go to a backend (``backends/``) with frames sampled
uniformly from the video; one record per pair is appended to a JSONL store
(``mllm4wtal.text.store``): video, class, key, complete, backend, model, prompt, plus
``frames_hash`` (sha256 of the frames shown), ``num_frames``, ``finish`` (per answer:
"stop", "length" = cut at the token limit) and ``seconds`` (the time spent decoding the
video and answering its prompts, shared out over its pairs).

- ``job.py``: the dataset to describe, the pairs still to do, ``run_describe``. Resumable:
  pairs already in the store are skipped; a last line cut by a crash is moved to
  ``<store>.corrupt-<n>`` (kept, and said so) and its pair asked again.
- ``writer.py``: the one writer (workers only answer): one job per store at a time (a lock
  file), records appended one at a time as each video's answers come back, the progress
  bar (videos done, pairs written, rate, ETA), the run's summary.
- ``worker.py``: one backend answering for one video at a time.
- ``pool.py``: videos handed to threads here, or to a pool of Ray actors (one model each).
- ``check.py``: ``--check``: coverage, empty and truncated answers, answers naming neither
  the class nor an action verb, length statistics.

It runs Ray actors and reads datasets, so it sits at the sweep layer; the store format, the
prompts and the templates it writes stay in ``mllm4wtal.text``, which training reads.
"""
