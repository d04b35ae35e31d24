"""Experiment files: a YAML description of the ``bitswitch`` commands that answer one research
question, validated and resolved into concrete command lines.

The format (``experiments/README.md`` has a worked example)::

    name: cpt                              # [A-Za-z0-9_-]+, names the run directory
    question: Does cyclic precision ...?   # the research question, in words (shown in the report)
    vars:                                  # defaults, used by ${name} below
      model: smollm2-135m
      steps: 600
    sizes:                                 # --size NAME overrides vars with one of these
      small: {steps: 20}
      full: {steps: 600, device: cuda}
    answers:                               # optional: rules that turn numbers into the answer sentence
      - compare: {kind: eval-squad, metric: f1, labels: [cyclic, random]}
    steps:
      - id: train_cyclic                   # unique, [A-Za-z0-9_-]+
        command: train                     # a bitswitch subcommand (checked against the CLI)
        label: cyclic                      # the row name in the report (default: the id)
        args:                              # flag: value; the runner adds --out itself
          model: ${model}
          profiles: [w8a8, w4a8]           # a list -> --profiles w8a8 w4a8
          set: {cycles: 2}                 # a mapping on a repeatable flag -> --set cycles=2
          checkpointing: true              # a boolean -> the bare flag (false: left out)
      - id: eval_cyclic
        command: eval
        args: {adapters: "${steps.train_cyclic.out}/adapters", ...}
      - id: ded
        foreach: [w8a8, w4a8]              # one step per item: ids ded.w8a8, ded.w4a8; ${item}
        command: train
        args: {profiles: ["${item}"], schedule: fixed}
      - id: extra
        when: ${full_only}                 # a boolean: false leaves the step out (e.g. at the small size)
        command: train
        args: {...}

``${name}`` is a variable (vars, then the size, then ``--set name=value``; a string that is only
``${name}`` keeps the variable's type, so lists stay lists); ``${steps.ID.out}`` is the output
directory of an earlier step (``ID`` may itself contain ``${item}``). Relative paths stay relative
to the directory ``bitswitch run`` is started in (the repository root).

Every step's output directory is content-addressed: ``CACHE/<command>-<hash>`` where the hash
covers the command and its resolved arguments (references to earlier steps count by *their*
hash, not by where the cache lives). Steps with the same configuration, in this experiment or in
another one sharing the cache, are therefore computed once.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import BitswitchError

TOP_KEYS = {"name", "question", "short", "description", "vars", "sizes", "steps", "answers", "notes"}
STEP_KEYS = {"id", "command", "args", "label", "foreach", "when"}
# commands a step may not run: the experiment machinery itself
NOT_STEPS = {"run", "report"}
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_REF = re.compile(r"\$\{([^${}]+)\}")   # innermost ${...}: nested references resolve inside out


@dataclass
class StepSpec:
    """One step as written (arguments not yet substituted)."""
    id: str
    command: str
    args: dict
    label: str | None = None
    foreach: object = None
    when: object = True


@dataclass
class Experiment:
    """A validated experiment at one size, with its variables resolved."""
    path: str
    name: str
    question: str
    size: str
    sizes: list[str]
    vars: dict
    sets: list[str]
    steps: list[StepSpec]
    answers: list = field(default_factory=list)
    notes: str = ""
    short: str = ""          # the question in one short line (the report's answers at a glance)
    text: str = ""          # the YAML as read, kept with the run for provenance
    commands: dict = field(default_factory=dict, repr=False)   # step command -> its parser (flag checks)

    @property
    def command(self) -> str:
        """The command line that reproduces this run."""
        sets = "".join(f" --set {s}" for s in self.sets)
        return f"bitswitch run {self.path} --size {self.size}{sets}"


@dataclass
class Step:
    """A resolved step: the argv to run (without ``--out``), its hash and output directory."""
    id: str
    command: str
    label: str
    argv: list[str]
    hash: str
    out: Path
    group: str              # the id as written (foreach steps share it)
    item: object = None

    @property
    def key(self) -> str:
        return f"{self.command}-{self.hash}"

    def full_argv(self) -> list[str]:
        return [*self.argv, "--out", str(self.out)]


def load_experiment(path: str | Path, size: str | None = None, sets: list[str] | None = None, *,
                    parser: argparse.ArgumentParser) -> Experiment:
    """Read and validate ``path``; pick ``size`` (default: the first one listed) and apply ``--set``.

    ``parser`` is the CLI's parser (the CLI hands it in: its subcommands are what steps may run, and
    experiments import nothing of the CLI)."""
    commands = known_commands(parser)
    p = Path(path)
    where = str(path)
    if not p.is_file():
        raise BitswitchError(f"experiment file {where!r} does not exist: pass a YAML file such as "
                             "experiments/accuracy.yaml")
    text = p.read_text()
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BitswitchError(f"experiment file {where!r} is not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(doc, dict):
        raise BitswitchError(f"experiment file {where!r} must be a mapping with name, question, steps")
    unknown = sorted(set(doc) - TOP_KEYS)
    if unknown:
        raise BitswitchError(f"{where}: unknown key(s) {', '.join(unknown)}: allowed are {', '.join(sorted(TOP_KEYS))}")
    for key in ("name", "question", "steps"):
        if not doc.get(key):
            raise BitswitchError(f"{where}: missing {key!r}: every experiment needs name, question and steps")
    name = str(doc["name"])
    if not _NAME.match(name):
        raise BitswitchError(f"{where}: name {name!r} must use only letters, digits, '_' and '-'")
    base = doc.get("vars") or {}
    sizes = doc.get("sizes") or {}
    if not isinstance(base, dict) or not isinstance(sizes, dict) or not all(
            isinstance(v, dict) for v in sizes.values()):
        raise BitswitchError(f"{where}: vars must be a mapping and sizes a mapping of size name -> vars")
    size_names = [str(s) for s in sizes]
    if size is None:
        size = size_names[0] if size_names else "default"
    elif size not in sizes:
        raise BitswitchError(f"{where}: unknown size {size!r}: use one of {', '.join(size_names) or '(none defined)'}")
    variables = {**base, **(sizes.get(size) or {})}
    for item in sets or []:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise BitswitchError(f"--set {item!r} must be var=value, e.g. --set steps=40")
        if key not in variables:
            raise BitswitchError(f"--set {key}: {where} has no variable {key!r}: known are "
                                 f"{', '.join(sorted(variables)) or '(none)'}")
        variables[key] = yaml.safe_load(value) if value.strip() else None
    variables = _resolve_vars(variables, where)
    steps = _parse_steps(doc["steps"], where, commands)
    answers = doc.get("answers") or []
    if not isinstance(answers, list):
        raise BitswitchError(f"{where}: answers must be a list of rules, e.g. - compare: {{metric: f1, ...}}")
    exp = Experiment(path=where, name=name, question=" ".join(str(doc["question"]).split()), size=size,
                     sizes=size_names, vars=variables, sets=list(sets or []), steps=steps, answers=answers,
                     notes=str(doc.get("notes") or ""), text=text, commands=commands,
                     short=" ".join(str(doc.get("short") or "").split()))
    resolve_steps(exp, Path("cache"))   # validates every reference and flag now, before anything runs
    return exp


def _parse_steps(raw, where: str, known: dict) -> list[StepSpec]:
    if not isinstance(raw, list):
        raise BitswitchError(f"{where}: steps must be a list of {{id, command, args}}")
    steps, seen = [], set()
    for i, s in enumerate(raw):
        if not isinstance(s, dict) or "id" not in s or "command" not in s:
            raise BitswitchError(f"{where}: step {i + 1} must be a mapping with id, command and args")
        bad = sorted(set(s) - STEP_KEYS)
        if bad:
            raise BitswitchError(f"{where}: step {s['id']!r} has unknown key(s) {', '.join(bad)}: allowed are "
                                 f"{', '.join(sorted(STEP_KEYS))}")
        sid, command = str(s["id"]), str(s["command"])
        if not _NAME.match(sid):
            raise BitswitchError(f"{where}: step id {sid!r} must use only letters, digits, '_' and '-'")
        if sid in seen:
            raise BitswitchError(f"{where}: step id {sid!r} is used twice: ids must be unique")
        seen.add(sid)
        if command not in known:
            raise BitswitchError(f"{where}: step {sid!r} runs unknown command {command!r}: this bitswitch has "
                                 f"{', '.join(sorted(known))}")
        args = s.get("args") or {}
        if not isinstance(args, dict):
            raise BitswitchError(f"{where}: step {sid!r}: args must be a mapping of flag: value")
        for k in ("out", "resume"):
            if k in args:
                raise BitswitchError(f"{where}: step {sid!r} sets {k!r}: the runner chooses output directories "
                                     "and resumes by itself; remove it")
        steps.append(StepSpec(sid, command, args, s.get("label"), s.get("foreach"), s.get("when", True)))
    return steps


def _resolve_vars(variables: dict, where: str) -> dict:
    """Variables may use other variables; resolve until nothing changes (a cycle is an error)."""
    out = dict(variables)
    for _ in range(len(out) + 2):
        new = {k: substitute(v, lambda n, k=k: _var_lookup(out, n, f"{where}: variable {k!r}"), "")
               for k, v in out.items()}
        if new == out:
            return out
        out = new
    raise BitswitchError(f"{where}: variables refer to each other in a cycle: {', '.join(sorted(variables))}")


def _var_lookup(variables: dict, name: str, where: str):
    if name.startswith("steps."):
        return "${" + name + "}"     # left for step resolution
    if name not in variables:
        raise BitswitchError(f"{where} uses ${{{name}}}, which is not defined: add it to vars "
                             f"(known: {', '.join(sorted(variables)) or 'none'})")
    return variables[name]


def substitute(value, lookup, where: str = ""):
    """Replace ``${...}`` in strings (recursively in lists and mappings) using ``lookup(name)``."""
    if isinstance(value, str):
        s = value
        for _ in range(16):   # nesting depth; each pass resolves the innermost references
            m = _REF.fullmatch(s)
            if m:
                return lookup(m.group(1).strip())
            new = _REF.sub(lambda m: _as_text(lookup(m.group(1).strip()), m.group(0), where), s)
            if new == s:
                return s
            s = new
        return s
    if isinstance(value, list):
        return [substitute(v, lookup, where) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, lookup, where) for k, v in value.items()}
    return value


def _as_text(v, ref: str, where: str) -> str:
    if isinstance(v, (list, dict)):
        raise BitswitchError(f"{where}: {ref} is a list or mapping and cannot be pasted into a string: "
                             "use it as the whole value")
    return _cli_str(v)


def _cli_str(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def resolve_steps(exp: Experiment, cache: Path) -> list[Step]:
    """Expand foreach, substitute variables and step references, build argv and hashes, in order."""
    resolved: dict[str, Step] = {}
    out = []
    for spec in exp.steps:
        where = f"{exp.path}: step {spec.id!r}"
        when = substitute(spec.when, lambda n: _step_lookup(exp, resolved, None, n, where, False), where)
        if not isinstance(when, bool):
            raise BitswitchError(f"{where}: when must be true or false (or a variable holding one), got {when!r}")
        if not when:
            continue   # left out at this size; a later reference to it is an error
        items = [None]
        if spec.foreach is not None:
            items = substitute(spec.foreach, lambda n: _step_lookup(exp, resolved, None, n, where, False), where)
            if not isinstance(items, list) or not items or any(isinstance(i, (list, dict)) for i in items):
                raise BitswitchError(f"{where}: foreach must give a non-empty list of values, got {items!r}")
        for item in items:
            sid = spec.id if spec.foreach is None else f"{spec.id}.{item}"
            if sid in resolved:
                raise BitswitchError(f"{where}: foreach gives {item!r} twice")
            args = substitute(spec.args, lambda n: _step_lookup(exp, resolved, item, n, where, False), where)
            symbolic = substitute(spec.args, lambda n: _step_lookup(exp, resolved, item, n, where, True), where)
            argv = to_argv(exp.commands, spec.command, args, where)
            # flags sorted for the hash: the same configuration written in another order is the same step
            digest = hashlib.sha256(json.dumps({"command": spec.command, "argv": to_argv(
                exp.commands, spec.command, dict(sorted(symbolic.items(), key=lambda kv: str(kv[0]))), where)}).encode())
            h = digest.hexdigest()[:12]
            label = spec.label if spec.label is not None else spec.id
            label = str(substitute(label, lambda n: _step_lookup(exp, resolved, item, n, where, False), where))
            step = Step(sid, spec.command, label, argv, h, cache / f"{spec.command}-{h}", spec.id, item)
            resolved[sid] = step
            out.append(step)
    return out


def _step_lookup(exp: Experiment, resolved: dict, item, name: str, where: str, symbolic: bool):
    if name == "item":
        if item is None:
            raise BitswitchError(f"{where} uses ${{item}} but has no foreach")
        return item
    if name.startswith("steps."):
        ref, dot, attr = name[len("steps."):].rpartition(".")
        if not dot or attr != "out":
            raise BitswitchError(f"{where}: ${{{name}}} must be ${{steps.ID.out}}")
        if ref not in resolved:
            raise BitswitchError(f"{where}: ${{{name}}} refers to step {ref!r}, which is not an earlier step "
                                 f"(earlier: {', '.join(resolved) or 'none'})")
        # the hash sees the referenced step's hash, so it does not depend on where the cache lives
        return f"@{resolved[ref].key}" if symbolic else str(resolved[ref].out)
    if name not in exp.vars:
        raise BitswitchError(f"{where} uses ${{{name}}}, which is not defined: add it to vars "
                             f"(known: {', '.join(sorted(exp.vars)) or 'none'})")
    return exp.vars[name]


def known_commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommands of the CLI's ``parser`` a step may run, with their parsers (for flag checks)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: p for name, p in sub.choices.items() if name not in NOT_STEPS}


def to_argv(commands: dict, command: str, args: dict, where: str) -> list[str]:
    """Turn ``{flag: value}`` into argv for ``command``, checking each flag against its parser."""
    flags = {o: a for a in commands[command]._actions for o in a.option_strings}
    if "--out" not in flags:
        raise BitswitchError(f"{where}: command {command!r} has no --out, so the runner cannot place its results")
    argv = [command]
    for key, value in args.items():
        flag = "--" + str(key).replace("_", "-")
        action = flags.get(flag)
        if action is None or flag == "--help":
            known = sorted(o[2:] for o in flags if o.startswith("--") and o not in ("--out", "--help"))
            raise BitswitchError(f"{where}: {command} has no flag {flag}: use one of {', '.join(known)}")
        if value is None:
            continue
        if action.nargs == 0:   # store_true / store_const: a bare flag
            if not isinstance(value, bool):
                raise BitswitchError(f"{where}: {flag} is a switch: give true or false, not {value!r}")
            argv += [flag] if value else []
        elif isinstance(action, argparse._AppendAction):
            items = ([f"{k}={_cli_str(v)}" for k, v in value.items()] if isinstance(value, dict)
                     else value if isinstance(value, list) else [value])
            for v in items:
                argv += [flag, _cli_str(v)]
        elif action.nargs in ("+", "*"):
            values = value if isinstance(value, list) else [value]
            if not values:
                raise BitswitchError(f"{where}: {flag} needs at least one value")
            argv += [flag, *(_cli_str(v) for v in values)]
        else:
            if isinstance(value, (list, dict)):
                raise BitswitchError(f"{where}: {flag} takes one value, got {value!r}")
            argv += [flag, _cli_str(value)]
    return argv
