"""SmolLM2-135M was shipped as Q4_1: its block weights lie on that grid bit for bit, which the demo's
``auto`` reads to take the ``gguf`` recipe, and a w4 profile on that grid is the model itself."""

import pytest
import torch

import bitswitch as bs
from bitswitch.demo_plan import RECIPES, native_grid
from bitswitch.profiles import QuantOptions
from tests.conftest import require_smollm2

pytestmark = pytest.mark.integration


def test_smollm2_lies_on_q4_1_and_its_w4_profile_there_is_the_fp_model():
    require_smollm2()
    model, tok = bs.load_model("smollm2-135m", device="cpu")
    assert native_grid(model) == "Q4_1"
    bs.make_switchable(model, QuantOptions(**RECIPES["gguf"].train))
    ids = tok("The quick brown fox jumps over the lazy dog.", return_tensors="pt").input_ids
    with torch.no_grad():
        bs.set_profile(model, "fp")
        fp = model(ids).logits
        bs.set_profile(model, "w4")
        assert torch.equal(model(ids).logits, fp)
