"""Training one configuration, the same way for every backend and for retraining: the trial runner
(``_trial``), the fit with a report after every epoch (``_training``), what a configuration and a
trained model cost (``_cost``), the device and its precision (``_device``), what each process sets up
(``_process``: quiet start-up, Ctrl-C held while a step trains) and the progress the runner reports to
(``_progress``). Above ``tuner.data``; below the model store, the backends and the search."""
