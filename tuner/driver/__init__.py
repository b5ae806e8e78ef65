"""The search itself, ``tuner.search``: check the request, prepare the job (data, space, study, trial
runner, deadline), hand it to a backend, in this process or in worker processes (``_search``,
``_workers``). Above ``tuner.backends``, which it looks up by name. Not named ``search``: that name is
the public function ``tuner.search``."""
