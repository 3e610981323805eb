"""What a process sets up around training: XLA's flags, the profiler, how it ends.

  processor   the host processor: its model and the features that matter (cpuinfo)
  xla_flags   the XLA flags every run sets, chosen per processor, before JAX starts a backend
  profiling   config.profile_steps: a JAX profiler trace of chosen train steps
  console     what training prints: progress with an ETA, evaluations, slow phases
  errors      user errors (message alone, traceback to a file) and exit statuses
"""
