import bitswitch as bs


def test_byte_accounting_equals_a_hand_count():
    model, _ = bs.load_model("tiny-gpt2", device="cpu")   # 2 layers, hidden 64, vocab 257, tied head
    bs.make_switchable(model, bs.QuantOptions(weight_symmetric=False))
    rep = bs.profile_report(model, "w8a8;L0.*=w4g16a8;L1.mlp_out=fp")
    total = sum(p.numel() for p in model.parameters())
    # L0: c_attn 64x192, c_proj 64x64, c_fc 64x256, c_proj 256x64 at 4 bits in groups of 16,
    # fp16 scales and 1-byte zero points per group
    l0 = [(192, 64), (64, 64), (256, 64), (64, 256)]
    l0_bytes = sum(o * i // 2 + (o * i // 16) * (2 + 1) for o, i in l0)
    # L1: the same shapes but mlp_out left in fp; 8 bits per channel
    l1 = l0[:3]
    l1_bytes = sum(o * i + o * (2 + 1) for o, i in l1)
    quantized_params = sum(o * i for o, i in l0 + l1)
    assert rep["quantized_bytes"] == l0_bytes + l1_bytes
    assert rep["unquantized_bytes"] == 2 * (total - quantized_params)
    assert rep["weight_bytes"] == l0_bytes + l1_bytes + 2 * (total - quantized_params)
    assert rep["fp16_weight_bytes"] == 2 * total and rep["fp32_weight_bytes"] == 4 * total
    bits = sum(o * i * 4 for o, i in l0) + sum(o * i * 8 for o, i in l1) + 64 * 256 * 16
    assert rep["avg_w_bits"] == bits / sum(o * i for o, i in l0 * 2)


def test_adapters_are_not_weights_and_tied_head_counts_embedding():
    model, _ = bs.load_model("tiny-gpt2", device="cpu")
    bs.make_switchable(model)
    before = bs.profile_report(model, "w8a8")["weight_bytes"]
    bs.add_adapters(model, ["w8a8"])
    assert bs.profile_report(model, "w8a8")["weight_bytes"] == before
    # quantizing the tied head keeps the fp16 embedding and adds the head's codes + scales
    vocab, hidden = model.get_input_embeddings().weight.shape
    with_head = bs.profile_report(model, "w8a8;head=w8")["weight_bytes"]
    assert with_head == before + vocab * hidden + vocab * 2
