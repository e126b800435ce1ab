"""tools/mutation.py and its mutant generator tools/_mutants.py.

The generator on a small source written here: which changes it makes (one of each operator
family we rely on), where it makes none (module level, decorators, docstrings, `raise`,
`# pragma: no mutate`), that a numba-style decorated function is mutated, and that every mutant
is valid Python that differs from the source. The driver on a tiny project made here (its own
git repository): a mutant a test catches is "killed", one no test sees "survived", one that
loops forever "timeout", one that crashes the test process "killed"; the project's files are unchanged afterwards and the scratch copy is
gone. And the command line's refusals.
"""
import argparse
import os
import subprocess

import tempfile
import textwrap

import pytest

from toolrun import load_tool

SOURCE = textwrap.dedent('''\
    import numba

    LIMIT = 3


    @numba.njit(cache=True)
    def kernel(a, b, out):
        """Adds a and b."""
        out[0] = a + b
        if a > b:
            raise ValueError("a must not exceed b")
        return combine(a, b)


    def skipped(x):
        return len(x) * 7  # pragma: no mutate


    class Holder:
        WIDTH = 5

        def scale(self, x: int = 2) -> int:
            x += 1
            return x * self.WIDTH
    ''')


@pytest.fixture(scope="module")
def gen():
    return load_tool("_mutants")


@pytest.fixture(scope="module")
def mutants(gen):
    module, cands = gen.candidates("pkg/m.py", SOURCE)
    rendered = [gen.render(module, c) for c in cands]
    return [m for m in rendered if m is not None]


def _changes(mutants):
    return {(m.line, m.diff) for m in mutants}


def test_each_operator_family(mutants):
    changes = _changes(mutants)
    expected = [
        (9, "- out[0] = a + b\n+ out[0] = a - b"),                       # arithmetic swap
        (9, "- out[0] = a + b\n+ out[1] = a + b"),                       # number + 1 (mutmut)
        (9, "- out[0] = a + b\n+ out[-1] = a + b"),                      # number - 1 (ours)
        (9, "- out[0] = a + b\n+ pass"),                                 # dropped statement
        (10, "- if a > b:\n+ if a >= b:"),                               # comparison swap
        (12, "- return combine(a, b)\n+ return combine(b, a)"),          # swapped arguments
        (12, "- return combine(a, b)\n+ return combine(None, b)"),       # argument -> None
        (23, "- x += 1\n+ x = 1"),                                       # += -> =
        (23, "- x += 1\n+ x -= 1"),
        (23, "- x += 1\n+ pass"),
        (24, "- return x * self.WIDTH\n+ return x / self.WIDTH"),
    ]
    for change in expected:
        assert change in changes, change


def test_no_change_where_changes_are_noise(mutants):
    lines = {m.line for m in mutants}
    assert lines == {9, 10, 12, 23, 24}
    # module constant (3), decorator (6), signature (7), docstring (8), raise (11),
    # pragma line (16), class constant (20), parameter default and annotations (22)


def test_mutants_are_valid_and_different(mutants):
    assert len(mutants) >= 15
    for m in mutants:
        compile(m.code, m.path, "exec")
        assert m.code != SOURCE
        assert m.id.startswith("pkg/m.py:")
    assert len({m.id for m in mutants}) == len(mutants)


def test_negative_numbers_render(gen):
    module, cands = gen.candidates("x.py", "def f(a):\n    return a[0] + 0.0\n")
    diffs = {gen.render(module, c).diff for c in cands if c.operator == "number-1"}
    assert diffs == {"- return a[0] + 0.0\n+ return a[-1] + 0.0",
                     "- return a[0] + 0.0\n+ return a[0] + -1.0"}


# -- the driver ---------------------------------------------------------------------------

CALC = textwrap.dedent('''\
    import os


    def guard(n):
        if n < 5:
            os.abort()
        return n


    def add(a, b):
        return a + b


    def unused(x):
        return x * 2


    def count(n):
        i = 0
        while i < n:
            i += 1
        return i
    ''')

TEST_CALC = textwrap.dedent('''\
    from calc_pkg.calc import add, count, guard

    def test_guard():
        assert guard(5) == 5

    def test_add():
        assert add(2, 3) == 5

    def test_count():
        assert count(4) == 4
    ''')


@pytest.fixture()
def project(tmp_path):
    """A git repository with one package (calc_pkg) and its tests."""
    (tmp_path / "calc_pkg").mkdir()
    (tmp_path / "calc_pkg" / "__init__.py").write_text("")
    (tmp_path / "calc_pkg" / "calc.py").write_text(CALC)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_calc.py").write_text(TEST_CALC)
    (tmp_path / ".gitignore").write_text("ignored/\n")
    (tmp_path / "ignored").mkdir()
    (tmp_path / "ignored" / "big.bin").write_text("not copied")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    return tmp_path


def _id_of(tool, root, diff):
    files = {"calc_pkg/calc.py": ["tests/test_calc.py"]}
    every, _ = tool.sample_mutants(files, None, 0, root=str(root))
    (m,) = [m for m in every if m.diff == diff]
    return m.id


def _scratch_folders():
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("engine-mutation-")}


@pytest.mark.slow
def test_killed_survived_timeout_and_nothing_left(project):
    tool = load_tool("mutation")
    files = {"calc_pkg/calc.py": ["tests/test_calc.py"]}
    ids = [_id_of(tool, project, "- return a + b\n+ return a - b"),
           _id_of(tool, project, "- return x * 2\n+ return x / 2"),
           _id_of(tool, project, "- i += 1\n+ i -= 1"),
           _id_of(tool, project, "- if n < 5:\n+ if n <= 5:")]
    mutants = tool.pick_mutants(files, ids, root=str(project))
    assert [m.id for m in mutants] == sorted(ids, key=lambda i: int(i.split(":")[1]))
    args = argparse.Namespace(baseline_timeout=300, min_timeout=15, timeout_factor=1.0)
    before = _scratch_folders()
    result = tool.run_module(files, mutants, args, log=lambda s: None, root=str(project),
                             package="calc_pkg")
    outcome = {r["diff"]: r["outcome"] for r in result["mutants"]}
    assert outcome == {"- return a + b\n+ return a - b": "killed",
                       "- return x * 2\n+ return x / 2": "survived",
                       "- i += 1\n+ i -= 1": "timeout",
                       "- if n < 5:\n+ if n <= 5:": "killed"}           # the tests crashed
    assert result["counts"] == {"killed": 2, "timeout": 1, "survived": 1, "error": 0,
                                "total": 4, "score": 0.75}
    assert (project / "calc_pkg" / "calc.py").read_text() == CALC
    assert _scratch_folders() == before


def test_scratch_copy_skips_ignored_files(project):
    tool = load_tool("mutation")
    scratch = tool.scratch_copy(str(project))
    try:
        assert os.path.isfile(os.path.join(scratch, "calc_pkg", "calc.py"))
        assert not os.path.exists(os.path.join(scratch, "ignored"))
    finally:
        import shutil
        shutil.rmtree(scratch)


def test_unmutated_tests_must_pass(project):
    tool = load_tool("mutation")
    (project / "tests" / "test_calc.py").write_text(TEST_CALC + "\ndef test_broken():\n    assert False\n")
    files = {"calc_pkg/calc.py": ["tests/test_calc.py"]}
    mutants = tool.pick_mutants(files, [_id_of(tool, project, "- return x * 2\n+ return x / 2")],
                                root=str(project))
    args = argparse.Namespace(baseline_timeout=300, min_timeout=15, timeout_factor=1.0)
    with pytest.raises(RuntimeError, match="unmutated tests"):
        tool.run_module(files, mutants, args, log=lambda s: None, root=str(project), package="calc_pkg")


def test_sampling_is_seeded():
    tool = load_tool("mutation")
    files = tool.MODULES["metrics"]
    a, pool = tool.sample_mutants(files, 12, 0)
    b, _ = tool.sample_mutants(files, 12, 0)
    c, _ = tool.sample_mutants(files, 12, 1)
    assert [m.id for m in a] == [m.id for m in b] and len(a) == 12 and pool > 12
    assert [m.id for m in a] != [m.id for m in c]
    assert [m.id for m in tool.pick_mutants(files, [a[3].id])] == [a[3].id]


def test_every_mapped_file_and_test_exists():
    tool = load_tool("mutation")
    for files in tool.MODULES.values():
        for source, tests in files.items():
            assert os.path.isfile(os.path.join(tool.ROOT, source)), source
            for t in tests:
                assert os.path.exists(os.path.join(tool.ROOT, t)), t


@pytest.mark.parametrize("argv, message", [
    (["--module", "softmax", "--sample", "0"], "--sample must be positive"),
    (["--module", "all", "--mutants", "engine/outputs/softmax.py:1"], "needs one --module"),
    (["--module", "softmax", "--mutants", "engine/outputs/softmax.py:999999"], "no such mutant"),
    (["--module", "softmax", "--mutants", "engine/outputs/adaptive.py:1"], "not a file of this module"),
])
def test_bad_command_lines(argv, message, capsys):
    tool = load_tool("mutation")
    with pytest.raises(SystemExit) as exc:
        tool.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
