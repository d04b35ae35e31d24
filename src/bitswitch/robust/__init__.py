"""Adversarial robustness of switchable models: text attacks, random precision inference (RPI),
and transferability of attacks across precisions.

- :mod:`.rpi`: the RPI mode (``bitswitch.rpi``) and the draws an adaptive attacker averages over;
- :mod:`.loss`: the answer loss attacks maximise (prefix-cached, batched, EOT over draws);
- :mod:`.typo`, :mod:`.hotflip`, :mod:`.embed`: the attacks, each on one question;
- :mod:`.examples`: editable spans and the replayable JSONL records;
- :mod:`.replay`, :mod:`.transfer`: evaluation of (adversarial) questions at a setting, the matrix;
- :mod:`.attack_runner`: ``bitswitch attack``.
"""

from .rpi import RPI, RPIConfig, rpi, use_setting

__all__ = ["RPI", "RPIConfig", "rpi", "use_setting"]
