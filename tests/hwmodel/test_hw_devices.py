"""Device presets: loading, sources, the bit-width energy laws, validation errors, the CLI."""

from __future__ import annotations

import re
import tomllib

import pytest

from hwmodel import PresetError, device_from_toml, list_presets, load_device
from hwmodel.__main__ import main as hw_main
from hwmodel.device import preset_path

PRESETS = ("cmos45", "edge-gpu", "edge-npu", "mcu", "neuromorphic")


def test_bundled_presets_are_listed_and_load() -> None:
    assert tuple(list_presets()) == PRESETS
    kinds = {n: load_device(n).kind for n in PRESETS}
    assert kinds == {"cmos45": "asic", "edge-gpu": "gpu", "edge-npu": "npu", "mcu": "mcu",
                     "neuromorphic": "neuromorphic"}


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_number_has_a_source_comment(name: str) -> None:
    """Every `key = value` line that sets a number (or a list of numbers) carries a comment."""
    text = preset_path(name).read_text(encoding="utf-8")
    assignment = re.compile(r"^\s*[\w.\"-]+\s*=\s*([-+0-9.eE\[\], ]+)(#.*)?$")
    checked = 0
    for line in text.splitlines():
        m = assignment.match(line)
        if m and re.search(r"\d", m.group(1)) and not line.lstrip().startswith("format_version"):
            checked += 1
            assert m.group(2) and len(m.group(2).strip("# ")) > 5, f"{name}: no source: {line!r}"
    assert checked >= 10


def test_cmos45_holds_the_horowitz_table_and_the_snn_paper_constants() -> None:
    raw = tomllib.loads(preset_path("cmos45").read_text())["energy"]
    assert raw == {"int8_add_pj": 0.03, "int32_add_pj": 0.1, "int8_mult_pj": 0.2,
                   "int32_mult_pj": 3.1, "fp16_add_pj": 0.4, "fp16_mult_pj": 1.1,
                   "fp32_add_pj": 0.9, "fp32_mult_pj": 3.7}
    e = load_device("cmos45").energy
    assert e is not None
    assert e.fp32_mac_j == pytest.approx(4.6e-12, rel=1e-12)  # E_MAC of spec §11
    assert e.fp32_ac_j == pytest.approx(0.9e-12, rel=1e-12)  # E_AC of spec §11
    assert e.elementwise_op_j == pytest.approx(4.6e-12, rel=1e-12)  # WKV at E_MAC


def test_energy_laws_adders_linear_multipliers_quadratic() -> None:
    e = load_device("cmos45").energy
    assert e is not None
    pj = 1e-12
    assert e.add_j(8) == pytest.approx(0.03 * pj)
    assert e.add_j(32) == pytest.approx(0.1 * pj)
    assert e.add_j(4) == pytest.approx(0.015 * pj)  # linear below 8 bits
    assert e.add_j(20) == pytest.approx((0.03 + 12 / 24 * 0.07) * pj)  # linear between 8 and 32
    assert e.mult_j(8, 8) == pytest.approx(0.2 * pj)
    assert e.mult_j(32, 32) == pytest.approx(3.1 * pj)
    assert e.mult_j(4, 4) == pytest.approx(0.2 / 4 * pj)  # half the width → a quarter of the energy
    assert e.mult_j(2, 2) == pytest.approx(0.2 / 16 * pj)
    assert e.mult_j(16, 16) == pytest.approx((0.2 + (256 - 64) / 960 * 2.9) * pj)
    widths = range(1, 33)
    assert all(e.add_j(a) < e.add_j(a + 1) for a in widths)
    assert all(e.mult_j(a, a) < e.mult_j(a + 1, a + 1) for a in widths)


GOOD = """
format_version = 1
name = "toy"
kind = "npu"
description = "a test device"
[compute]
clock_hz = 1.0e9
fp32_macs_per_cycle = 1
activation_bits = 8
accumulator_bits = 32
skips_zero_spikes = false
elementwise_ops_per_cycle = 1
neuron_updates_per_cycle = 1
[compute.int_macs_per_cycle]
8 = 64
[energy]
int8_add_pj = 0.03
int32_add_pj = 0.1
int8_mult_pj = 0.2
int32_mult_pj = 3.1
fp32_add_pj = 0.9
fp32_mult_pj = 3.7
[[memory]]
name = "sram"
on_chip = true
capacity_bytes = 1024
read_pj_per_byte = 1.0
write_pj_per_byte = 1.0
bandwidth_bytes_per_s = 1.0e9
[power]
static_w = 0.0
"""


def test_a_user_toml_parses() -> None:
    dev = device_from_toml(GOOD, "toy.toml")
    assert dev.compute is not None and dev.compute.clock_hz == 1e9
    assert dev.memory[0].read_j_per_byte == pytest.approx(1e-12)


@pytest.mark.parametrize(("old", "new", "expected"), [
    pytest.param("clock_hz = 1.0e9\n", "", r"compute\.clock_hz: missing \(expected Hz\)",
                 id="missing-key"),
    pytest.param("clock_hz = 1.0e9", "clock_hz = -5.0", r"compute\.clock_hz: must be > 0",
                 id="negative-clock"),
    pytest.param("read_pj_per_byte = 1.0", "read_pj_per_byte = -1.0",
                 r"memory\[0\]\.read_pj_per_byte: must be >= 0", id="negative-energy"),
    pytest.param("clock_hz = 1.0e9", "clock_mhz = 1000.0",
                 r"compute\.clock_mhz: unknown key; did you mean 'clock_hz'\? Units are part "
                 r"of the key name", id="unit-mhz"),
    pytest.param("static_w = 0.0", "static_mw = 0.0",
                 r"power\.static_mw: unknown key; did you mean 'static_w'\? Units", id="unit-mw"),
    pytest.param("read_pj_per_byte = 1.0", "read_nj_per_byte = 0.001",
                 r"memory\[0\]\.read_nj_per_byte: unknown key; did you mean 'read_pj_per_byte'",
                 id="unit-nj"),
    pytest.param("capacity_bytes = 1024", "capacity_kib = 1",
                 r"memory\[0\]\.capacity_kib: unknown key; did you mean 'capacity_bytes'",
                 id="unit-kib"),
    pytest.param("clock_hz = 1.0e9", 'clock_hz = "1 GHz"',
                 r"compute\.clock_hz: must be a number in Hz.*units belong in the key name",
                 id="unit-in-string"),
    pytest.param("static_w = 0.0", "static_w = true", r"power\.static_w: must be a number",
                 id="bool-not-number"),
    pytest.param("format_version = 1", "format_version = 2", r"format_version: must be 1",
                 id="format-version"),
    pytest.param('kind = "npu"', 'kind = "fpga"', r"kind: must be one of", id="bad-kind"),
    pytest.param("8 = 64", "eight = 64", r"compute\.int_macs_per_cycle\.eight: keys are integer",
                 id="width-key"),
    pytest.param("8 = 64", "4 = 32\n8 = 64",
                 r"compute\.int_macs_per_cycle must not increase with the width", id="rates-order"),
    pytest.param("int8_add_pj = 0.03", "int8_add_pj = 0.5",
                 r"energy: int8_add_pj must not exceed int32_add_pj", id="adder-order"),
    pytest.param('[power]', '[powers]\nx = 1\n[power]', r"powers: unknown key",
                 id="unknown-section"),
    pytest.param('kind = "npu"', 'kind = "neuromorphic"',
                 r"compute: section \[compute\] is not used with kind = 'neuromorphic'",
                 id="neuromorphic-needs-its-section"),
])
def test_invalid_presets_name_the_key(old: str, new: str, expected: str) -> None:
    assert old in GOOD
    with pytest.raises(PresetError, match=r"^bad\.toml: " + expected):
        device_from_toml(GOOD.replace(old, new, 1), "bad.toml")


def test_missing_memory_and_bad_toml() -> None:
    no_mem = GOOD.split("[[memory]]")[0] + "[power]\nstatic_w = 0.0\n"
    with pytest.raises(PresetError, match=r"bad\.toml: memory: missing"):
        device_from_toml(no_mem, "bad.toml")
    with pytest.raises(PresetError, match=r"bad\.toml: not valid TOML"):
        device_from_toml("clock_hz = = 3", "bad.toml")


def test_unknown_device_names_the_presets(tmp_path) -> None:
    with pytest.raises(PresetError, match=r"unknown device 'tpu'.*cmos45"):
        load_device("tpu")
    with pytest.raises(PresetError, match=r"no such file"):
        load_device(str(tmp_path / "nope.toml"))


def test_with_memory_capacity_resizes_one_level() -> None:
    dev = load_device("edge-npu")
    big = dev.with_memory_capacity("sram", 2**20)
    assert [m.capacity_bytes for m in big.memory] == [2**20, dev.memory[1].capacity_bytes]
    with pytest.raises(PresetError, match="no memory level named 'l3'"):
        dev.with_memory_capacity("l3", 1)


def test_cli_list_and_show(capsys, tmp_path) -> None:
    assert hw_main(["--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in PRESETS)
    assert hw_main(["--show", "neuromorphic"]) == 0
    out = capsys.readouterr().out
    assert "23.6 pJ" in out and "Davies" in out  # parsed summary, then the TOML with sources
    user = tmp_path / "board.toml"
    user.write_text(GOOD)
    assert hw_main(["--show", str(user), "--no-source"]) == 0
    assert "toy (npu)" in capsys.readouterr().out


def test_cli_rejects_an_invalid_preset_with_one_line(capsys, tmp_path) -> None:
    bad = tmp_path / "board.toml"
    bad.write_text(GOOD.replace("clock_hz = 1.0e9", "clock_hz = -1.0"))
    assert hw_main(["--show", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "board.toml: compute.clock_hz: must be > 0" in err
    with pytest.raises(SystemExit) as exc:
        hw_main([])
    assert exc.value.code == 2
