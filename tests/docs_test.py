"""Docs that cannot drift: every `python -m charlm.X ...` command the docs show is checked.

README.md, docs/*.md and benchmarks/README.md are read; each command in a fenced block
(lines continued with a backslash are one command) or in an inline code span is checked
without running it:
- charlm/X.py exists;
- every --flag is one of X's flags (or --noFLAG for a bool) or one of absl's standard flags
  (--helpfull, --verbosity, --logtostderr, ...). X's flags are read from its source with
  `ast`: the flags.DEFINE_* calls in X.define_flags() and in the define functions it calls
  (evaluate.define_dynamic_flags for compare), since a command defines its flags only when
  it runs and importing it would import JAX;
- every --config.KEY (and each KEY of compare's --variant=NAME:KEY=VALUE,...) names a field
  of the config the command uses: its --config=FILE, or configs/shakespeare.py (the default
  config) when FILE is a placeholder (`...`) or the command is given no --config;
- a --config=FILE that looks like a config path (configs/*.py) exists.
Placeholders are fine: `charlm.X`, `W`, `DIR`, `/path/to/x`, `[--flag=...]`, `KEY=VALUE`.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.util
import pathlib
import re
import shlex

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
STAND_IN = 'configs/shakespeare.py'  # for a command that uses a config it is not shown
# `python -m charlm.X`, or in prose `charlm.X --flag...` (not `charlm.load(...)`)
COMMAND = re.compile(r'python3? -m charlm\.(\w+)\b(?!\.)|(?<![\w/.])charlm\.(\w+)(?=\s+--?\w)')
SHELL_ENDS = {'&&', '||', ';', '|', '&', '>', '>>', '2>&1', '<'}


def doc_files() -> list[pathlib.Path]:
    docs = sorted((ROOT / 'docs').glob('*.md')) if (ROOT / 'docs').is_dir() else []
    return [p for p in [ROOT / 'README.md', *docs, ROOT / 'benchmarks' / 'README.md']
            if p.exists()]


@dataclasses.dataclass
class Command:
    line: int  # 1-based, where the command starts
    module: str  # X of charlm.X
    args: list[str]  # the tokens after `python -m charlm.X`
    source: tuple[str, ...] = ()  # the lines it spans, from `line` on

    def line_of(self, text: str) -> int:
        """The line of the first of its lines that holds `text` (else where it starts)."""
        return self.line + next((i for i, s in enumerate(self.source) if text in s), 0)


def _tokens(text: str) -> list[str]:
    """Shell words of `text` up to a shell operator or a comment; quotes removed."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=False)
    lexer.whitespace_split, lexer.commenters = True, '#'
    try:
        words = list(lexer)
    except ValueError:  # an unbalanced quote: a command quoted in a shell variable
        words = [w.strip('"\'') for w in text.split('#')[0].split()]
    out = []
    for w in words:
        if w in SHELL_ENDS:
            break
        out.append(w)
    return out


def _command(text: str, line: int, source: list[str]) -> list[Command]:
    out = []
    for m in COMMAND.finditer(text):
        rest = _tokens(text[m.end():])
        end = next((i for i, w in enumerate(rest)
                    if w in ('python', 'python3') or re.fullmatch(r'charlm\.\w+', w)), len(rest))
        out.append(Command(line, m[1] or m[2], rest[:end], tuple(source)))
    return out


def extract(text: str) -> list[Command]:
    """The charlm commands of a markdown text, in fenced blocks and inline code spans."""
    lines = text.split('\n')
    out, i, fence = [], 0, False
    while i < len(lines):
        if lines[i].lstrip().startswith('```'):
            fence, i = not fence, i + 1
        elif fence:  # one logical line: backslash-continued lines joined
            start, logical = i, lines[i]
            while logical.rstrip().endswith('\\') and i + 1 < len(lines):
                i += 1
                logical = logical.rstrip()[:-1] + ' ' + lines[i]
            out += _command(logical, start + 1, lines[start:i + 1])
            i += 1
        elif not lines[i].strip():
            i += 1
        else:  # a paragraph: its inline code spans, which may run over lines
            start = i
            while (i < len(lines) and lines[i].strip()
                   and not lines[i].lstrip().startswith('```')):
                i += 1
            para = '\n'.join(lines[start:i])
            for m in re.finditer(r'(`+)(.+?)\1', para, re.S):
                line = start + 1 + para.count('\n', 0, m.start())
                out += _command(m[2].replace('\n', ' '), line, m[2].split('\n'))
    return out


# --- a command's flags, read from its source -------------------------------------------------

@functools.cache
def _tree(module: str) -> ast.Module | None:
    path = ROOT / 'charlm' / f'{module}.py'
    return ast.parse(path.read_text(encoding='utf-8')) if path.exists() else None


@functools.cache
def _imports(module: str) -> dict[str, tuple[str, str]]:
    """{local name: (charlm module, name)} of a module's `from charlm[.X] import ...`."""
    out = {}
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.ImportFrom) and node.module == 'charlm':
            out |= {a.asname or a.name: (a.name, '') for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith('charlm.'):
            out |= {a.asname or a.name: (node.module.split('.')[1], a.name) for a in node.names}
    return out


def _function(tree: ast.Module, name: str) -> ast.FunctionDef | None:
    return next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name),
                None)


def _define_calls(module: str, node: ast.AST, seen: set) -> dict[str, str]:
    """{flag: DEFINE_kind} of the DEFINE_* calls under `node`, following define_*() calls."""
    found = {}
    for call in ast.walk(node):
        if not isinstance(call, ast.Call):
            continue
        f = call.func
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, 'id', '')
        if name.startswith('DEFINE_'):
            arg = call.args[0] if call.args else next(
                (k.value for k in call.keywords if k.arg == 'name'), None)
            if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                raise AssertionError(f'charlm/{module}.py:{call.lineno}: a flag name the docs '
                                     'check cannot read (not a string literal); teach '
                                     'tests/docs_test.py to read it')
            found[arg.value] = name
        elif name.startswith('define_') and name.endswith('flags'):
            names = _imports(module)
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
                owner = names.get(f.value.id, (f.value.id,))[0]  # evaluate.define_..._flags()
            else:  # a function of this module, or one imported from another
                owner, name = names.get(name, (module, name))
            target = _tree(owner)
            fn = target and _function(target, name)
            if fn is None:
                raise AssertionError(f'charlm/{module}.py:{call.lineno}: cannot find {name} in '
                                     f'charlm/{owner}.py; teach tests/docs_test.py to read it')
            if (owner, name) not in seen:
                seen.add((owner, name))
                found |= _define_calls(owner, fn, seen)
    return found


@functools.cache
def command_flags(module: str) -> dict[str, str] | None:
    """{flag: DEFINE_kind} of `python -m charlm.<module>`; None if there is no such module.

    Its define_flags() and what that calls; a module without one: every DEFINE_* in it.
    """
    tree = _tree(module)
    if tree is None:
        return None
    fn = _function(tree, 'define_flags')
    return _define_calls(module, fn if fn is not None else tree, {(module, 'define_flags')})


@functools.cache
def absl_flags() -> frozenset[str]:
    """The flags absl gives every command (app.run's help flags, absl.logging's)."""
    from absl import app, flags
    from absl import logging as _  # noqa: F401  defines --verbosity, --logtostderr, ...

    app.define_help_flags()  # what app.run does first; idempotent
    names = {'flagfile', 'undefok'}  # absl's special flags, read by the parser itself
    for owner, fl in flags.FLAGS.flags_by_module_dict().items():
        if owner.startswith('absl.'):
            names |= {f.name for f in fl} | {f.short_name for f in fl if f.short_name}
    return frozenset(names)


# --- configs -----------------------------------------------------------------------------------

@functools.cache
def load_config(path: str):
    """get_config() of a config file (FILE or FILE:ARG), as config_flags loads it."""
    file, _, arg = path.partition(':')
    spec = importlib.util.spec_from_file_location(
        'docs_test_config_' + re.sub(r'\W', '_', file), ROOT / file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg) if arg else mod.get_config()


def missing_key(config, key: str) -> str | None:
    """Why the dotted `key` is not a field of `config`; None if it is (or is a placeholder)."""
    node, path = config, []
    for name in key.split('.'):
        if name.isupper() or '[' in name:  # KEY, or an index into a list
            return None
        if not hasattr(node, 'keys'):
            return f'{".".join(path)} is a value, not a section'
        if name not in node.keys():
            return f'{".".join(path) or "the config"} has no field {name}'
        node = node[name]
        path.append(name)
    return None


def variant_keys(text: str) -> list[str]:
    """The KEYs of compare's NAME:KEY=VALUE,KEY=VALUE (commas inside () or [] kept)."""
    _, _, rest = text.partition(':')
    keys, depth, part = [], 0, ''
    for ch in rest + ',':
        depth += (ch in '([') - (ch in ')]')
        if ch == ',' and depth == 0:
            if '=' in part:
                keys.append(part.split('=')[0].strip())
            part = ''
        else:
            part += ch
    return keys


def _is_placeholder(value: str) -> bool:
    return value in ('', '...', 'FILE') or value.isupper() or '/path/to' in value


# --- the check ---------------------------------------------------------------------------------

def check_command(cmd: Command) -> list[tuple[int, str]]:
    """What is wrong with one command: (line, message) each; [] if nothing."""
    if cmd.module.isupper():  # `python -m charlm.X --helpfull`: any command
        return []
    flags_ = command_flags(cmd.module)
    if flags_ is None:
        return [(cmd.line, f'python -m charlm.{cmd.module}: no module charlm/{cmd.module}.py')]
    known = set(flags_) | absl_flags()
    bools = {n for n, kind in flags_.items() if kind in ('DEFINE_bool', 'DEFINE_boolean')}
    errors, config_file, keys, variants = [], None, [], []
    args = [a.strip('[]') for a in cmd.args]
    for i, arg in enumerate(args):
        m = re.match(r'--?([A-Za-z][\w.-]*)(?:=(.*))?$', arg, re.S)
        if not m:
            continue  # a value, a positional argument or a placeholder such as `...`
        name, value = m[1], m[2]
        if name.startswith('config.') and 'config' in flags_:
            keys.append(name[len('config.'):])
        elif name in known or (name.startswith('no') and name[2:] in bools):
            if name == 'config':
                config_file = value if value is not None else (args[i + 1:] or [''])[0]
            elif name == 'variant' and cmd.module == 'compare' and value:
                variants.append(value)
        else:
            errors.append((cmd.line_of(f'-{name}'),
                           f'python -m charlm.{cmd.module} has no flag --{name}'))
    if config_file is not None and not _is_placeholder(config_file):
        file = config_file.partition(':')[0]
        if not (ROOT / file).is_file():
            errors.append((cmd.line_of(config_file),
                           f'--config={config_file}: no such config file'))
            return errors
        config = load_config(config_file)
    elif keys or variants:
        config, config_file = load_config(STAND_IN), STAND_IN
    else:
        return errors
    for key in keys:
        if why := missing_key(config, key):
            errors.append((cmd.line_of(f'config.{key}'), f'--config.{key}: {why} ({config_file})'))
    for v in variants:
        for key in variant_keys(v):
            if why := missing_key(config, key):
                errors.append((cmd.line_of(v), f'--variant={v}: {key}: {why} ({config_file})'))
    return errors


def check_text(text: str, name: str) -> list[str]:
    """`name:line: message` for every problem of every charlm command in a markdown text."""
    return [f'{name}:{line}: {e}' for cmd in extract(text) for line, e in check_command(cmd)]


# --- tests -------------------------------------------------------------------------------------

@pytest.mark.parametrize('path', doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_doc_commands_match_the_code(path):
    problems = check_text(path.read_text(encoding='utf-8'), str(path.relative_to(ROOT)))
    assert not problems, 'docs out of date with the code:\n' + '\n'.join(problems)


def test_the_docs_show_commands():
    """The check reads something: the README alone shows every command."""
    text = (ROOT / 'README.md').read_text(encoding='utf-8')
    shown = {cmd.module for cmd in extract(text)}
    assert {'main', 'prepare', 'sample', 'evaluate', 'gates', 'compare', 'plot',
            'corpus_stats', 'bench'} <= shown


FAKE = '''# A page

Train with `python -m charlm.main --config=configs/tiny.py --workdir=W`, then:

```bash
python -m charlm.sample --workdir=runs/x --prompt="ROMEO:" \\
    --lenght=500 --temperature=0.8
python -m charlm.main --config=configs/shakespeare.py --workdir=runs/big \\
    --config.model.hidden_size=512 \\
    --config.model.hiden_size=512
```

Or `python -m charlm.evaluate --workdir=W [--split=val|test]
[--json] --dynamic --nojson`. From Python, `charlm.load(W)`; in prose, `charlm.bench
--config=configs/tiny.py --steps=5`.
'''


def test_a_misspelt_flag_fails_naming_file_and_line():
    problems = check_text(FAKE, 'fake.md')
    assert 'fake.md:7: python -m charlm.sample has no flag --lenght' in problems


def test_a_misspelt_config_key_fails_naming_file_and_line():
    problems = check_text(FAKE, 'fake.md')
    assert any(p.startswith('fake.md:10: --config.model.hiden_size: model has no field '
                            'hiden_size') for p in problems), problems
    assert len(problems) == 2, problems  # the rest is right: inline, continued, [--flag]


def test_commands_are_read_whole():
    cmds = extract(FAKE)
    assert [(c.line, c.module) for c in cmds] == [
        (3, 'main'), (6, 'sample'), (8, 'main'), (13, 'evaluate'), (14, 'bench')]
    assert cmds[1].args == ['--workdir=runs/x', '--prompt=ROMEO:', '--lenght=500',
                            '--temperature=0.8']
    assert cmds[3].args[-2:] == ['--dynamic', '--nojson']


@pytest.mark.parametrize('doc, error', [
    ('`python -m charlm.nosuch --workdir=W`',
     'python -m charlm.nosuch: no module charlm/nosuch.py'),
    ('`python -m charlm.main --config=configs/nosuch.py --workdir=W`',
     '--config=configs/nosuch.py: no such config file'),
    ('`python -m charlm.main --config=... --workdir=W --config.modle.cell=gru`',
     '--config.modle.cell: the config has no field modle (configs/shakespeare.py)'),
    ('`python -m charlm.sample --workdir=W --config.seed=1`',
     'python -m charlm.sample has no flag --config.seed'),
    ('`python -m charlm.compare --config=configs/tiny.py --variant=a:model.cel=gru`',
     '--variant=a:model.cel=gru: model.cel: model has no field cel (configs/tiny.py)'),
    ('`python -m charlm.evaluate --workdir=W --dynamic_lrs=1`',
     'python -m charlm.evaluate has no flag --dynamic_lrs'),
])
def test_each_kind_of_drift_is_caught(doc, error):
    assert check_text(doc, 'f.md') == [f'f.md:1: {error}']


def test_absl_and_shared_flags_pass():
    doc = ('`python -m charlm.compare --config=configs/tiny.py --out=runs/c --dynamic '
           '--dynamic_tune_file=F --variant=a:model.hidden_sizes=(64,64),seed=1 --helpfull '
           '--verbosity=1 --logtostderr --config.data.seq_len=32`')
    assert check_text(doc, 'f.md') == []
