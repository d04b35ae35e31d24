"""A tiny experiment on tiny-llama: a SQuAD-format file and a text file in tmp_path, and a YAML
whose steps are train -> eval (squad) -> eval (wikitext) -> export."""

from __future__ import annotations

import json
import textwrap

import pytest


def squad_file(path, n=6):
    paras = [{"context": "Items: " + ", ".join(f"item {j}" for j in range(n)) + ".",
              "qas": [{"id": f"q{i}{j}", "question": f"Which is item {j}?",
                       "answers": [{"text": f"item {j}", "answer_start": 0}]} for j in range(n)]} for i in range(2)]
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "T", "paragraphs": paras}]}))
    return path


TINY = """
name: tiny
question: Does a tiny switchable model keep its accuracy at fewer bits?
vars:
  model: tiny-llama
  squad: SQUAD
  text: TEXT
  steps: 2
  profiles: [fp, w8a8, w4a8]
sizes:
  small: {steps: 2}
  full: {steps: 4}
answers:
  - compare: {kind: eval-squad, metric: f1, labels: [switchable, dedicated]}
  - drop: {kind: eval-wikitext, metric: ppl, label: switchable}
steps:
  - id: train
    command: train
    label: switchable
    args: {model: "${model}", data: "${squad}", profiles: "${profiles}", schedule: random, keying: shared,
           steps: "${steps}", batch_size: 4, device: cpu, save_every: 1, set: {max_length: 160, warmup_steps: 1}}
  - id: ded
    foreach: [w4a8]
    command: train
    label: dedicated
    args: {model: "${model}", data: "${squad}", profiles: ["${item}"], schedule: fixed, steps: "${steps}",
           batch_size: 4, device: cpu, set: {max_length: 160, warmup_steps: 1}}
  - id: squad
    command: eval
    label: switchable
    args: {model: "${model}", adapters: "${steps.train.out}/adapters", task: squad, data: "${squad}",
           profiles: "${profiles}", max_new_tokens: 3, batch_size: 4, device: cpu}
  - id: squad_ded
    foreach: [w4a8]
    command: eval
    label: dedicated
    args: {model: "${model}", adapters: "${steps.ded.${item}.out}/adapters", task: squad, data: "${squad}",
           profiles: ["${item}"], max_new_tokens: 3, batch_size: 4, device: cpu}
  - id: ppl
    command: eval
    label: switchable
    args: {model: "${model}", adapters: "${steps.train.out}/adapters", task: wikitext, data: "${text}",
           profiles: "${profiles}", window: 64, max_tokens: 400, device: cpu}
  - id: export
    command: export
    args: {model: "${model}", adapters: "${steps.train.out}/adapters", profile: w4a8, device: cpu}
"""


ATTACK = """
  - id: attack
    command: attack
    label: switchable
    args: {model: "${model}", adapters: "${steps.train.out}/adapters", attack: [typo], craft_profile: [fp],
           eval_profiles: [fp, w4a8], rpi: [fp, w4a8], eot: 1, data: "${squad}", limit: 2, max_new_tokens: 2,
           budget: 1, candidates: 2, device: cpu}
"""


SEARCH = """
  - id: sens
    command: sensitivity
    label: layer
    args: {model: "${model}", adapters: "${steps.train.out}/adapters", base: w8a8, probe: w4a8, granularity: layer,
           metric: answer-ppl, data: "${squad}", limit: 4, device: cpu}
  - id: sens_unit
    command: sensitivity
    label: unit proxy
    args: {model: "${model}", adapters: "${steps.train.out}/adapters", base: w8a8, probe: w4a8, granularity: unit,
           proxy: fisher, proxy_batches: 1, batch_size: 2, data: "${squad}", limit: 4, device: cpu}
  - id: search
    command: search
    args: {model: "${model}", adapters: "${steps.train.out}/adapters", task: squad, data: "${squad}", limit: 4,
           metric: answer-ppl, candidates: "4,8", avg_bits: 6, pareto: true, device: cpu}
  - id: squad_searched
    command: eval
    label: searched
    args: {model: "${model}", adapters: "${steps.train.out}/adapters", task: squad, data: "${squad}",
           profiles: ["${steps.search.out}/profiles/search-avg6.json"], max_new_tokens: 3, batch_size: 4, device: cpu}
"""


def has_command(name: str) -> bool:
    from bitswitch.cli import build_parser
    from bitswitch.experiments.spec import known_commands

    return name in known_commands(build_parser())


@pytest.fixture
def tiny_experiment(tmp_path):
    squad = squad_file(tmp_path / "squad.json")
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog.\n" * 30)
    path = tmp_path / "tiny.yaml"
    text_yaml = textwrap.dedent(TINY) + (ATTACK if has_command("attack") else "") + (
        SEARCH if has_command("sensitivity") and has_command("search") else "")
    path.write_text(text_yaml.replace("SQUAD", str(squad)).replace("TEXT", str(text)))
    return path
