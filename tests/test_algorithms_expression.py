"""algorithms.expression: evaluation semantics, and hostile input that must never run."""

from __future__ import annotations

import builtins
from pathlib import Path

import numpy as np
import pytest
import rasterio

from algorithms.expression import MAX_LENGTH, compile_expression


@pytest.fixture(scope="module")
def bands(shared_data):
    item = shared_data / "sentinel-2-l2a-timeseries" / "S2B_33TWM_20230813_0_L2A"
    out = {}
    for name in ("B02", "B03", "B04", "B08"):
        with rasterio.open(item / f"{name}.tif") as src:
            dn = src.read(1, window=((300, 428), (300, 428)))
        out[name] = np.where(dn == 0, np.nan, dn * 1e-4).astype(np.float32)
    return out


def test_ndvi_on_real_bands(bands):
    expr = compile_expression("(B08 - B04) / (B08 + B04)")
    assert expr.names == ("B08", "B04") and expr.outputs == 1
    out = expr(bands)
    assert out.dtype == np.float32 and out.shape == (1, 128, 128)
    expected = (bands["B08"] - bands["B04"]) / (bands["B08"] + bands["B04"])
    np.testing.assert_array_equal(out[0], expected)


def test_several_outputs(bands):
    expr = compile_expression("B04;B03; B02 ;(B08-B04)/(B08+B04)")
    assert expr.outputs == 4 and expr.names == ("B04", "B03", "B02", "B08")
    out = expr(bands)
    assert out.shape == (4, 128, 128)
    for i, name in enumerate(("B04", "B03", "B02")):
        np.testing.assert_array_equal(out[i], bands[name])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a + b * 2 - c / 4", lambda a, b, c: a + b * 2 - c / 4),
        ("-a + +b", lambda a, b, c: -a + b),
        ("a ** 2 + b ** 0.5", lambda a, b, c: a**2 + np.sqrt(b)),
        ("a ** (1/2)", lambda a, b, c: np.sqrt(a)),
        ("a ** -1", lambda a, b, c: 1 / a),
        ("where(a > b, a, c)", lambda a, b, c: np.where(a > b, a, c)),
        ("(a >= 1) + (b < 4) * 2 + (c == 3) * 4 + (a != b) * 8 + (a <= 2) * 16",
         lambda a, b, c: (a >= 1) + (b < 4) * 2 + (c == 3) * 4 + (a != b) * 8 + (a <= 2) * 16),
        ("abs(a - c)", lambda a, b, c: np.abs(a - c)),
        ("sqrt(b) + log(c)", lambda a, b, c: np.sqrt(b) + np.log(c)),
        ("clip(b, 2, 3.5)", lambda a, b, c: np.clip(b, 2, 3.5)),
        ("min(a, b, c) + max(a, c)", lambda a, b, c: np.minimum(np.minimum(a, b), c) + np.maximum(a, c)),
        ("1e-3 * a + 2.5E2", lambda a, b, c: 1e-3 * a + 250.0),
    ],
)
def test_semantics(text, expected):
    a = np.array([1.0, 2.0, 3.0, 0.5], np.float32)
    b = np.array([4.0, 1.0, 9.0, 2.0], np.float32)
    c = np.array([3.0, 3.0, 1.0, 8.0], np.float32)
    out = compile_expression(text)({"a": a, "b": b, "c": c})
    np.testing.assert_allclose(out[0], np.asarray(expected(a, b, c), np.float32), rtol=1e-6)


def test_nodata_rules():
    a = np.array([1.0, np.nan, 0.0, 2.0, -1.0], np.float32)
    b = np.array([0.0, 1.0, 0.0, 1.0, 1.0], np.float32)
    run = lambda text: compile_expression(text)({"a": a, "b": b})[0]  # noqa: E731
    np.testing.assert_array_equal(run("a / b"), [np.nan, np.nan, np.nan, 2.0, -1.0])  # x/0 and 0/0
    np.testing.assert_array_equal(run("1 / (a / b)"), [np.nan, np.nan, np.nan, 0.5, -1.0])
    np.testing.assert_array_equal(run("a > 0"), [1.0, np.nan, 0.0, 1.0, 0.0])  # NaN compares to NaN
    np.testing.assert_array_equal(run("where(a > 0, 5, 7)"), [5.0, np.nan, 7.0, 5.0, 7.0])
    np.testing.assert_array_equal(run("where(b, a, 3)"), [3.0, np.nan, 3.0, 2.0, -1.0])  # NaN unselected: fine
    np.testing.assert_array_equal(run("log(a)"), [0.0, np.nan, np.nan, np.log(np.float32(2)), np.nan])
    np.testing.assert_array_equal(run("sqrt(a)"), [1.0, np.nan, 0.0, np.sqrt(np.float32(2)), np.nan])
    np.testing.assert_array_equal(run("a * 1e38 * 1e38"), [np.nan, np.nan, 0.0, np.nan, np.nan])  # overflow
    np.testing.assert_array_equal(run("max(a, b)"), [1.0, np.nan, 0.0, 2.0, 1.0])


def test_constants_and_shapes():
    x = np.zeros((2, 3), np.float32)
    out = compile_expression("1 + 2; x")({"x": x})
    assert out.shape == (2, 2, 3) and (out[0] == 3).all()
    assert compile_expression("0.5")({}).shape == (1,)
    with pytest.raises(ValueError, match="unknown band 'y'"):
        compile_expression("x + y")({"x": x})
    with pytest.raises(ValueError, match="different shapes"):
        compile_expression("x + y")({"x": x, "y": np.zeros(3, np.float32)})
    assert compile_expression("min(B1, sqrt(B2)) * B1").names == ("B1", "B2")


# Each input must raise ValueError whose message names the offending token (second item).
HOSTILE = [
    ("__import__('os').system('touch /tmp/jeo-pwned')", "'__import__'"),
    ("__import__", "'__import__'"),
    ("B04.__class__", "'.__class__'"),
    ("B04.real", "'.real'"),
    ("().__class__.__bases__[0].__subclasses__()", "'('"),
    ("B04.__class__.__bases__[0].__subclasses__()", "'.__class__'"),
    ("lambda: 1", "'lambda'"),
    ("(lambda x: x)(B04)", "'lambda'"),
    ("9 ** 9 ** 9 ** 9", "'**'"),
    ("B04 ** 1e10", "'1e10'"),
    ("B04 ** B03", "'B03'"),
    ("2 ** 99999999999999999999", "'99999999999999999999'"),
    ("1e999", "'1e999'"),
    ("'B04' * 10 ** 9", "'B04'"),
    ("b'x'", "\"b'x'\""),
    ("1j", "'1j'"),
    ("[B04]", "'['"),
    ("{B04: 1}", "'{'"),
    ("B04[0]", "'['"),
    ("open('/etc/passwd')", "'open'"),
    ("eval('1+1')", "'eval'"),
    ("exec('import os')", "'exec'"),
    ("getattr(B04, 'x')", "'getattr'"),
    ("sqrt.__code__", "'sqrt'"),
    ("B04.__code__", "'.__code__'"),
    ("B04 if B03 else B02", "'if'"),
    ("(x := 1)", "':='"),
    ("f'{B04}'", "\"f'{B04}'\""),
    ("B04 and B03", "'and'"),
    ("not B04", "'not'"),
    ("~B04", "'~'"),
    ("B04 ^ 2", "'^'"),
    ("B04 // 2", "'//'"),
    ("B04 % 2", "'%'"),
    ("B04 @ B03", "'@'"),
    ("B04 << 2", "'<<'"),
    ("B04 in B03", "'in'"),
    ("0 < B04 < 1", "'<'"),
    ("[x for x in B04]", "'['"),
    ("__builtins__", "'__builtins__'"),
    ("_secret + 1", "'_secret'"),
    ("True + 1", "'True'"),
    ("None", "'None'"),
    ("sqrt", "'sqrt'"),
    ("where(B04)", "'where'"),
    ("abs(B04, B03)", "'abs'"),
    ("sqrt(x=B04)", "'x='"),
    ("max(*B04)", "'*'"),
    ("abs(B04)(1)", "'('"),
    ("import os", "'import'"),
    ("B04 +", "'end of input' at column 6"),
    ("B04;", "empty expression"),
    (";", "empty expression"),
    ("B04\nB03", "'\\n'"),
    ("B04 # comment", "'#'"),
    ("B04 + é", "'é'"),
    ("B04\x00", "'\\x00'"),
    ("B04 " + "+ B04 " * 300, "too long"),
    ("max(" + ",".join(["a"] * 300) + ")", "too many terms"),
    ("(" * 250 + "B04" + ")" * 250, "too many nested parentheses, near '('"),
    ("B04 B03", "'B03'"),
    ("B04 \\", "'\\\\'"),
    ("-" * 100 + "B04", "too deeply nested"),
    ("a" * (MAX_LENGTH + 1), "too long"),
]


@pytest.mark.parametrize(("text", "token"), HOSTILE, ids=[repr(t[:30]) for t, _ in HOSTILE])
def test_hostile_input_is_rejected_and_never_run(text, token, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("eval/exec called")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    monkeypatch.setattr(builtins, "__import__", _guarded_import(builtins.__import__))
    with pytest.raises(ValueError) as error:
        compile_expression(text)
    assert token in str(error.value), str(error.value)


def _guarded_import(real):
    """An __import__ that refuses os/subprocess, to catch any evaluation of user text."""

    def guarded(name, *args, **kwargs):
        if name.split(".")[0] in ("os", "subprocess", "posix"):
            raise AssertionError(f"import of {name} during compilation")
        return real(name, *args, **kwargs)

    return guarded


def test_hostile_table_is_big_enough_and_nothing_ran():
    assert len(HOSTILE) >= 20
    assert not Path("/tmp/jeo-pwned").exists()


def test_error_names_token_and_column():
    with pytest.raises(ValueError, match=r"unsupported name or syntax '__import__' at column 1$"):
        compile_expression("__import__")
    with pytest.raises(ValueError, match=r"'\.real' at column 12"):
        compile_expression("B04 + (B03).real.system")
    with pytest.raises(ValueError, match=r"'\^' at column 10"):
        compile_expression("B04; B03 ^ 2")
    with pytest.raises(ValueError, match=r"'exec' at column 7"):
        compile_expression("B04 + exec(1)")
