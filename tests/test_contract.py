"""ModelCard: JSON round trip, validation, and resolve_card precedence."""

from __future__ import annotations

import json

import pytest

from cvtool.contract import SCHEMA_VERSION, CardError, ModelCard, resolve_card


def _card(**kw) -> ModelCard:
    base = dict(class_names=("cat", "dog", "bird"), channels=3, input_size=(64, 48))
    base.update(kw)
    return ModelCard(**base)


# --- round trip ---------------------------------------------------------------------------------


def test_json_round_trip_equals_original():
    card = ModelCard(
        class_names=("Katze", "chien", "猫", "🐶", "Ωmega"),
        channels=3,
        input_size=(96, 128),
        resize="stretch",
        crop_pct=0.9,
        interpolation="bicubic",
        scale=1.0 / 255.0,
        mean=(0.1, 0.2, 0.3),
        std=(0.4, 0.5, 0.6),
        output="probs",
        extra={"arch": "resnet18", "run": "ü"},
    )
    text = card.to_json()
    # Unicode is kept as-is, not escaped.
    assert "猫" in text and "🐶" in text
    back = ModelCard.from_json(text)
    assert back == card
    assert back.class_names == ("Katze", "chien", "猫", "🐶", "Ωmega")
    assert back.input_size == (96, 128)
    assert back.mean == (0.1, 0.2, 0.3)
    assert back.extra == {"arch": "resnet18", "run": "ü"}
    assert back.to_json() == text


def test_from_dict_normalises_lists_to_tuples():
    card = ModelCard.from_dict(
        {"class_names": ["a", "b"], "channels": 1, "input_size": [28, 28], "mean": [0.5], "std": [0.25]}
    )
    assert card.class_names == ("a", "b")
    assert card.input_size == (28, 28)
    assert card.mean == (0.5,) and card.std == (0.25,)
    assert card.num_classes == 2


# --- validation ---------------------------------------------------------------------------------


def test_mean_length_must_match_channels():
    with pytest.raises(CardError, match="mean has 3 values but the model has 1 channels"):
        ModelCard(class_names=("a", "b"), channels=1)


def test_std_length_must_match_channels():
    with pytest.raises(CardError, match="std has 2 values"):
        _card(std=(0.2, 0.2))


def test_std_must_not_contain_zero():
    with pytest.raises(CardError, match="std must not contain 0"):
        _card(std=(0.2, 0.0, 0.2))


def test_unknown_resize_rejected():
    with pytest.raises(CardError, match="resize"):
        _card(resize="squash")


def test_duplicate_class_names_rejected():
    with pytest.raises(CardError, match="not unique"):
        _card(class_names=("a", "b", "a"))


def test_unknown_field_rejected():
    d = _card().to_dict()
    d["colour"] = "blue"
    with pytest.raises(CardError, match="unknown fields.*colour"):
        ModelCard.from_dict(d)
    with pytest.raises(CardError, match="unknown fields"):
        ModelCard.from_json(json.dumps(d))


@pytest.mark.parametrize("text", ["{not json", "", '{"class_names": ["a"],}'])
def test_malformed_json_rejected(text):
    with pytest.raises(CardError, match="not valid JSON"):
        ModelCard.from_json(text)


def test_json_not_an_object_rejected():
    with pytest.raises(CardError, match="not an object"):
        ModelCard.from_json('["a", "b"]')


def test_newer_schema_version_rejected():
    d = _card().to_dict()
    d["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(CardError, match="newer"):
        ModelCard.from_json(json.dumps(d))
    # The current version is fine.
    d["schema_version"] = SCHEMA_VERSION
    assert ModelCard.from_dict(d) == _card()


def test_missing_class_names_rejected():
    with pytest.raises(CardError, match="no class_names"):
        ModelCard.from_dict({"channels": 3})


def test_wrong_type_becomes_card_error():
    d = _card().to_dict()
    d["input_size"] = ["a", "b"]
    with pytest.raises(CardError, match="malformed"):
        ModelCard.from_dict(d)


# --- resolve_card -------------------------------------------------------------------------------


def test_resolve_overrides_beat_file_card():
    file_card = _card(resize="stretch", crop_pct=0.9)
    card = resolve_card(
        file_card,
        {"class_names": ["x", "y", "z"], "crop_pct": 0.5, "resize": None},
        num_outputs=3,
        input_channels=3,
    )
    assert card.class_names == ("x", "y", "z")
    assert card.crop_pct == 0.5
    # None overrides are ignored; the file card's value stays.
    assert card.resize == "stretch"
    assert card.input_size == (64, 48)


def test_resolve_file_card_used_without_overrides():
    file_card = _card(interpolation="lanczos")
    assert resolve_card(file_card, None, num_outputs=3, input_channels=3) == file_card


def test_resolve_without_card_uses_graph():
    card = resolve_card(None, None, num_outputs=4, input_channels=3, input_hw=(40, 30))
    assert card.class_names == ("0", "1", "2", "3")
    assert card.channels == 3
    assert card.input_size == (40, 30)
    assert len(card.mean) == 3 and len(card.std) == 3


def test_resolve_without_card_dynamic_hw_keeps_default_size():
    card = resolve_card(None, None, num_outputs=2, input_channels=3, input_hw=(None, None))
    assert card.input_size == ModelCard(class_names=("a",)).input_size


def test_resolve_one_channel_without_card_gets_single_mean_std():
    card = resolve_card(None, None, num_outputs=10, input_channels=1, input_hw=(28, 28))
    assert card.channels == 1
    assert card.mean == (0.5,)
    assert card.std == (0.5,)
    assert card.input_size == (28, 28)
    assert card.class_names == tuple(str(i) for i in range(10))


def test_resolve_without_card_and_without_outputs_needs_classes():
    with pytest.raises(CardError, match="--classes"):
        resolve_card(None, None)
    card = resolve_card(None, {"class_names": ["a", "b"]})
    assert card.class_names == ("a", "b")


def test_resolve_class_count_mismatch_raises():
    with pytest.raises(CardError, match="names 3 classes but the model outputs 5"):
        resolve_card(_card(), num_outputs=5, input_channels=3)


def test_resolve_override_class_count_mismatch_raises():
    with pytest.raises(CardError, match="outputs 3"):
        resolve_card(_card(), {"class_names": ["a", "b"]}, num_outputs=3)


def test_resolve_channel_mismatch_raises():
    with pytest.raises(CardError, match="3 input channels but the model takes 1"):
        resolve_card(_card(), num_outputs=3, input_channels=1)
