"""The XLA flags per processor (runtime/xla_flags.py) from /proc/cpuinfo's
text (runtime/processor.py): what is chosen, that the user's flags win, and
that the log says which were chosen."""

from __future__ import annotations

import logging

import pytest

from runtime import processor, xla_flags

# /proc/cpuinfo's first processor on each kind of machine (flags shortened).
AMD_AVX512 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512_vnni
processor\t: 1
model name\t: another line that is not read
"""
INTEL_AMX = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni amx_bf16 avx512_fp16 amx_tile amx_int8
"""
AMD_AVX2 = """model name\t: AMD EPYC 7B12
flags\t\t: fpu sse2 avx fma avx2
"""
ARM = """processor\t: 0
Features\t: fp asimd evtstrm aes sha1 sha2 crc32
CPU part\t: 0xd0c
"""
# A table of the kind BY_FEATURE is, with a flag per rule to tell them apart.
TABLE = {'amx_tile': ('--amx=1',), 'avx512f': ('--avx512=1',)}


@pytest.mark.parametrize('text, described', [
    (AMD_AVX512, 'AMD EPYC (avx2, avx512f, avx512_bf16, avx512_vnni; no AMX)'),
    (INTEL_AMX, ('Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz '
                 '(avx2, avx512f, avx512_bf16, avx512_vnni, amx_tile, amx_bf16)')),
    (AMD_AVX2, 'AMD EPYC 7B12 (avx2; no AMX)'),
    (ARM, '0xd0c (no AVX2 or AVX-512; no AMX)'),
])
def test_processor_model_and_features_from_cpuinfo(text, described):
  assert processor.parse(text).describe() == described


@pytest.mark.parametrize('text, extra', [
    (INTEL_AMX, ['--amx=1']),        # has avx512f too: the first rule decides
    (AMD_AVX512, ['--avx512=1']),
    (AMD_AVX2, []),
    (ARM, []),
])
def test_flags_are_chosen_by_the_first_feature_the_processor_has(text, extra):
  chosen = xla_flags.choose(processor.parse(text), TABLE)
  assert chosen == [*xla_flags.COMMON, *extra]


def test_every_rule_names_a_feature_that_is_read():
  assert set(xla_flags.BY_FEATURE) <= set(processor.FEATURES)


def test_a_flag_the_user_set_wins_whatever_its_value():
  chosen = ['--xla_a=1', '--xla_b=2']
  flags, added, kept = xla_flags.merge('--xla_b=mine --xla_a_longer=3', chosen)
  assert flags == '--xla_b=mine --xla_a_longer=3 --xla_a=1'
  assert (added, kept) == (['--xla_a=1'], ['--xla_b'])
  assert xla_flags.merge('', chosen)[0] == '--xla_a=1 --xla_b=2'


def test_apply_sets_the_environment_and_logs_what_it_chose(monkeypatch, caplog):
  monkeypatch.setattr(xla_flags, 'BY_FEATURE', TABLE)
  monkeypatch.setenv('XLA_FLAGS', '--amx=0')
  with caplog.at_level(logging.INFO):
    flags = xla_flags.apply(processor.parse(INTEL_AMX))
  assert flags == f'--amx=0 {xla_flags.COMMON[0]}'
  message = caplog.records[-1].getMessage()
  assert message.startswith('XLA flags for Intel(R) Xeon(R) Platinum 8481C'), message
  assert message.endswith(f'added {xla_flags.COMMON[0]}; left as XLA_FLAGS has them: '
                          '--amx.'), message


def test_this_machine_is_read_from_proc_cpuinfo():
  with open(processor.CPUINFO) as f:
    model = next(line for line in f if line.startswith('model name')).split(':', 1)[1]
  assert processor.this().model == model.strip()
