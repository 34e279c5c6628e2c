"""Many inputs to their records: inputs (what to tag), pipeline (jobs threads through one model), supervisor (the
watched worker processes that survive a crashing decoder), writer (the results file and --resume), embeddings,
and run (``Engine``, which runs a batch in-process or watched, and ``tag_many``)."""
