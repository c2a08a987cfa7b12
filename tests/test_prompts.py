"""Prompt strings: weights, colons, grids, templates and every error message."""

import pytest

from clipclop_jax.guidance.prompts import (
    PromptError,
    WeightedPrompt,
    format_prompts,
    parse_grid,
    parse_prompts,
)

# parse_prompts


def test_weights_follow_the_last_colon_and_default_to_one():
    assert parse_prompts("a cat made of leaves:1 | blurry:-0.5") == [
        WeightedPrompt("a cat made of leaves", 1.0),
        WeightedPrompt("blurry", -0.5),
    ]
    assert parse_prompts("a red circle") == [("a red circle", 1.0)]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("a:b:2", [("a:b", 2.0)]),
        ("a sign saying: hello", [("a sign saying: hello", 1.0)]),
        ("a sign saying: hello:0.5", [("a sign saying: hello", 0.5)]),
        ("  sky :  +2.5  |  sea  ", [("sky", 2.5), ("sea", 1.0)]),
        ("x:.5 | y:1e-1 | z:3.", [("x", 0.5), ("y", 0.1), ("z", 3.0)]),
        ("the year: 1999:1", [("the year: 1999", 1.0)]),
        ("ends in colon:", [("ends in colon:", 1.0)]),
        ("a:0 | b:1", [("a", 0.0), ("b", 1.0)]),
    ],
)
def test_a_colon_not_followed_by_a_number_stays_text(spec, expected):
    assert parse_prompts(spec) == [WeightedPrompt(*e) for e in expected]


def test_weights_are_floats():
    (prompt,) = parse_prompts("a cat:2")
    assert isinstance(prompt.weight, float)


@pytest.mark.parametrize("spec", ["", "   ", "\n"])
def test_empty_spec_is_refused(spec):
    with pytest.raises(PromptError, match=r"^the prompt is empty: give at least one prompt"):
        parse_prompts(spec)


@pytest.mark.parametrize(
    ("spec", "number"), [("a || b", "2 of 3"), ("a |", "2 of 2"), ("| a", "1 of 2")]
)
def test_empty_prompt_between_bars_is_refused(spec, number):
    with pytest.raises(PromptError, match=rf"^prompt {number} in .* is empty: remove the extra"):
        parse_prompts(spec)


def test_weight_without_text_is_refused():
    with pytest.raises(PromptError, match=r"^prompt 2 ':2' has a weight but no text"):
        parse_prompts("a | :2")


def test_all_zero_weights_are_refused():
    with pytest.raises(PromptError, match=r"every prompt weight in 'a:0 \| b:-0' is zero"):
        parse_prompts("a:0 | b:-0")


@pytest.mark.parametrize("weight", ["inf", "-inf", "nan", "Infinity", "1e308", "-4e38", "2e4"])
def test_non_finite_or_huge_weights_are_refused(weight):
    # 1e308 is a finite float64 but inf in float32, where the loss is computed.
    with pytest.raises(PromptError, match=r"^prompt 1 'cat:.*' has weight .*: use a finite weight"):
        parse_prompts(f"cat:{weight}")


def test_the_offending_prompt_is_named():
    with pytest.raises(PromptError, match=r"^prompt 2 'b:-1e308' has weight -1e\+308"):
        parse_prompts("a:1 | b:-1e308")
    assert parse_prompts("a:1e4 | b:-1e4")[1].weight == -1e4


def test_weights_that_vanish_in_float32_count_as_zero():
    with pytest.raises(PromptError, match="is zero"):
        parse_prompts("a:1e-50 | b:0")


def test_prompt_error_is_a_value_error_of_one_line():
    with pytest.raises(ValueError) as info:
        parse_prompts("a || b")
    assert "\n" not in str(info.value)


# parse_grid


def test_grid_rows_split_on_slash_and_columns_on_bar():
    assert parse_grid("sky | sun | sky / tree | field | chicken") == [
        ["sky", "sun", "sky"],
        ["tree", "field", "chicken"],
    ]
    assert parse_grid(" one ") == [["one"]]


def test_grid_matching_rows_and_cols_passes():
    grid = parse_grid("a | b / c | d / e | f", rows=3, cols=2)
    assert len(grid) == 3
    assert all(len(row) == 2 for row in grid)


def test_ragged_grid_names_the_row():
    with pytest.raises(
        PromptError, match=r"^row 2 of the prompt grid has 2 prompts but row 1 has 3"
    ):
        parse_grid("a | b | c / d | e")


def test_grid_with_wrong_number_of_rows_is_refused():
    with pytest.raises(PromptError, match=r"^the prompt grid has 2 rows but 3 are needed"):
        parse_grid("a | b / c | d", rows=3)


def test_grid_with_wrong_number_of_columns_is_refused():
    with pytest.raises(PromptError, match=r"^the prompt grid has 2 columns but 1 are needed"):
        parse_grid("a | b / c | d", cols=1)


def test_empty_grid_and_empty_cells_are_refused():
    with pytest.raises(PromptError, match=r"^the prompt grid is empty"):
        parse_grid("  ")
    with pytest.raises(PromptError, match=r"^row 2, column 1 of the prompt grid is empty"):
        parse_grid("a / ")
    with pytest.raises(PromptError, match=r"^row 1, column 2 of the prompt grid is empty"):
        parse_grid("a | | c")


def test_grid_size_arguments_are_checked():
    with pytest.raises(ValueError, match=r"^rows=0 is out of range"):
        parse_grid("a", rows=0)


# format_prompts


def test_template_puts_the_prompt_at_every_brace_pair():
    assert format_prompts("close-up of {}", "a chicken") == "close-up of a chicken"
    assert format_prompts("{} next to {}", "a cat") == "a cat next to a cat"
    assert format_prompts("{x} and {}", "y") == "{x} and y"


def test_template_without_braces_is_refused():
    with pytest.raises(PromptError, match=r"^the template 'close-up' has no '\{\}'"):
        format_prompts("close-up", "a chicken")
