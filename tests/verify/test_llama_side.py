"""llama.cpp's answers under bitswitch's stop rule (on a stand-in engine), and the decode-speed arithmetic."""

from bitswitch.models import byte_tokenizer
from bitswitch.verify.llama_side import cut_answer, decode_speed, llama_answer

TOK = byte_tokenizer()
EOS = TOK.eos_token_id


def ids(text: str) -> list[int]:
    return TOK(text, add_special_tokens=False)["input_ids"]


def decode(tokens) -> str:
    return TOK.decode(tokens, skip_special_tokens=True)


def test_cut_answer_is_bitswitchs_rule():
    assert cut_answer(ids(" Paris\nQuestion"), {EOS}, decode) == (ids(" Paris\n"), "newline")
    assert cut_answer(ids("\n\n Paris\nX"), {EOS}, decode) == (ids("\n\n Paris\n"), "newline")  # leading breaks
    assert cut_answer(ids(" Paris") + [EOS] + ids("\n"), {EOS}, decode) == (ids(" Paris"), "eos")
    assert cut_answer(ids(" Par"), {EOS}, decode) == (ids(" Par"), "end")
    assert cut_answer([], {EOS}, decode) == ([], "end")


class StandIn:
    """An engine that 'generates' a fixed continuation, honouring max_new_tokens, EOS and stop strings
    as the bridge does (a stop ends the row once its text holds one; tokens keep what was generated)."""

    def __init__(self, continuation: list[int], eog=(EOS,)):
        self.continuation, self.eog, self.calls = continuation, set(eog), []

    def generate(self, prompt, max_new_tokens, stop=None, min_new_tokens=0, eos=True):
        self.calls.append(stop)
        out = []
        for t in self.continuation[:max_new_tokens]:
            out.append(t)
            if eos and t in self.eog:
                break
            if stop and any(s in decode(out) for s in stop):
                break
        return {"tokens": out, "new_tokens": len(out), "prefill_s": 0.5, "decode_s": 0.25 * (len(out) - 1)}


def test_llama_answer_stops_like_bitswitch():
    llm = StandIn(ids(" Paris\nQuestion: next"))
    assert llama_answer(llm, [1], 32, {EOS}, decode) == {"text": "Paris", "tokens": ids(" Paris\n"), "stop": "newline"}
    assert llm.calls == [["\n"]]                                   # one generation: the stop string did it
    llm = StandIn(ids("\n Rome\nQ"))                               # a leading break stops llama.cpp, not bitswitch
    assert llama_answer(llm, [1], 32, {EOS}, decode) == {"text": "Rome", "tokens": ids("\n Rome\n"), "stop": "newline"}
    assert llm.calls == [["\n"], None]                             # so it is generated again without stops
    llm = StandIn(ids(" 1990") + [EOS])
    assert llama_answer(llm, [1], 32, {EOS}, decode)["stop"] == "eos"
    assert llama_answer(StandIn(ids(" abcdef")), [1], 4, {EOS}, decode) == {"text": "abc", "tokens": ids(" abc"),
                                                                          "stop": "max"}
    other_eog = StandIn(ids(" x") + [7] + ids("y"), eog=(EOS, 7))  # llama.cpp ends at a token bitswitch runs on
    assert llama_answer(other_eog, [1], 32, {EOS}, decode)["stop"] == "eog"


def test_decode_speed_skips_the_warm_up_and_takes_medians():
    llm = StandIn(ids("x" * 100))
    out = decode_speed(llm, [1, 2, 3, 4], new_tokens=9, repeats=3)
    assert out == {"decode_tok_s": 4.0, "prefill_tok_s": 8.0, "prompt_tokens": 4, "new_tokens": 9, "repeats": 3}
    assert len(llm.calls) == 4
