"""moe/analysis/paired_init.py: which arms of a paired comparison share the reference's initial weights."""

from moe.analysis.paired_init import InitialDraws, initial_weights_note

ROUTER = (("embed.weight", (257, 32)), ("blocks.0.ffn.router.scorer.weight_ED", (8, 32)))
COSINE = (("embed.weight", (257, 32)), ("blocks.0.ffn.router.scorer.proj_PD", (16, 32)))


def test_arms_drawn_by_name_share_the_weights():
    arms = {"top_k": InitialDraws("by_name", ROUTER), "cosine": InitialDraws("by_name", COSINE)}
    assert initial_weights_note(arms, "top_k").startswith("Initial weights: every arm drew them by name as `top_k`")


def test_one_stream_pairs_only_the_arms_with_the_reference_parameters():
    arms = {"top_k": InitialDraws("sequence", ROUTER), "sigmoid": InitialDraws("sequence", ROUTER)}
    assert "every arm drew them in one random stream, with the same parameters as `top_k`" in (
        initial_weights_note(arms, "top_k"))
    arms["cosine"] = InitialDraws("sequence", COSINE)
    note = initial_weights_note(arms, "top_k")
    assert note.startswith("Initial weights: `cosine` drew them otherwise than `top_k`") and "sigmoid" not in note


def test_another_draws_setting_is_not_paired():
    arms = {"top_k": InitialDraws("by_name", ROUTER), "sigmoid": InitialDraws("sequence", ROUTER)}
    assert initial_weights_note(arms, "top_k").startswith("Initial weights: `sigmoid` drew them otherwise")


def test_runs_not_from_scratch_are_named():
    arms = {"dense": InitialDraws("sequence", ROUTER), "upcycled": InitialDraws(None, COSINE)}
    assert initial_weights_note(arms, "dense") == (
        "Initial weights: `upcycled` did not start from scratch (their init.path), so only the data order is paired.")
