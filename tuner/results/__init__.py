"""What a study gives back once searched, read from the store: its studies, trials, best trial and
parameter importance as plain dicts (``_results``), one HTML page about it (``_report``), and a
trial's model as a file plain Keras loads, retrained or ensembled on request (``_export``). The top
layer under the CLI; nothing here runs a search."""
