"""What a process sets up around training: XLA's flags and the profiler.

  xla_flags   the XLA flags every run sets, before JAX starts a backend
  profiling   config.profile_steps: a JAX profiler trace of chosen train steps
"""
