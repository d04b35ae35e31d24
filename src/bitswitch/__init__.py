"""bitswitch: one model, many precisions.

Switchable per-unit fake quantization of Hugging Face causal LMs, per-profile LoRA adapters and
the evaluation around them.

    model, tok = bitswitch.load_model("smollm2-135m")   # or an export directory (bitswitch.loading)
    bitswitch.make_switchable(model)
    bitswitch.set_profile(model, "w8a8;L0.*=fp")
"""

from ._version import __version__
from .accounting import profile_report
from .adapters import AdapterConfig, add_adapters, freeze_base, load_adapters, save_adapters
from .errors import BitswitchError
from .loading import load as load_model
from .models import resolve_device
from .profiles import BUILTIN, Profile, QuantOptions, parse_profile, resolve
from .robust.rpi import rpi
from .switching import calibrate, make_switchable, set_profile, set_weight_cache, use_profile
from .units import find_units

__all__ = ["AdapterConfig", "BUILTIN", "BitswitchError", "Profile", "QuantOptions", "add_adapters",
           "calibrate", "find_units", "freeze_base", "load_adapters", "load_model", "make_switchable",
           "parse_profile", "profile_report", "resolve", "resolve_device", "save_adapters", "set_profile",
           "set_weight_cache", "use_profile"]
