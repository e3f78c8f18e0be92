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


def test_resolve_card_size_must_match_a_fixed_graph_input():
    with pytest.raises(
        CardError, match=r"^the card's input size 64×48 does not match the model's fixed input 28×28$"
    ):
        resolve_card(_card(), num_outputs=3, input_channels=3, input_hw=(28, 28))
    with pytest.raises(CardError, match="input size 32×32 does not match the model's fixed input 28×28"):
        resolve_card(_card(), {"input_size": [32, 32]}, num_outputs=3, input_hw=(28, 28))
    # One fixed axis is checked on its own; the other may be anything.
    with pytest.raises(CardError, match="input size 64×48 does not match the model's fixed input height 28"):
        resolve_card(_card(), input_hw=(28, None))
    with pytest.raises(CardError, match="input size 64×48 does not match the model's fixed input width 28"):
        resolve_card(_card(), input_hw=("h", 28))


def test_resolve_card_dynamic_or_matching_graph_input_is_accepted():
    card = _card()
    for hw in [(64, 48), (None, None), ("height", "width"), (64, None), (None, 48), None]:
        assert resolve_card(card, num_outputs=3, input_channels=3, input_hw=hw) == card
    # Without a file card the graph's fixed size fills the gap, and then of course matches.
    assert resolve_card(None, {"class_names": ["a"]}, input_hw=(28, 28)).input_size == (28, 28)


# --- jpeg_draft ---------------------------------------------------------------------------------

# The fields of a card as cvtool wrote them before jpeg_draft existed.
OLD_FIELDS = {
    "class_names", "channels", "input_size", "resize", "crop_pct", "interpolation", "scale", "mean",
    "std", "output", "schema_version", "extra",
}  # fmt: skip


def test_jpeg_draft_default_is_left_out_so_older_versions_read_the_card():
    card = _card()
    assert card.jpeg_draft is True
    assert set(card.to_dict()) == OLD_FIELDS
    assert "jpeg_draft" not in card.to_json()
    assert ModelCard.from_json(card.to_json()) == card


def test_jpeg_draft_false_is_written_and_read_back():
    card = _card(jpeg_draft=False)
    d = json.loads(card.to_json())
    assert d["jpeg_draft"] is False
    back = ModelCard.from_json(card.to_json())
    assert back.jpeg_draft is False and back == card and back != _card()
    # Given explicitly as true, it is accepted and means the default.
    assert ModelCard.from_dict({**_card().to_dict(), "jpeg_draft": True}) == _card()


def test_jpeg_draft_override_and_validation():
    assert resolve_card(_card(), {"jpeg_draft": False}).jpeg_draft is False
    with pytest.raises(CardError, match="jpeg_draft must be true or false"):
        ModelCard.from_dict({**_card().to_dict(), "jpeg_draft": "no"})


# --- describe() states the rule the code runs ---------------------------------------------------


def test_describe_states_pre_crop_size_for_a_non_square_card():
    import re

    from cvtool.images import pre_crop_size

    card = ModelCard(class_names=("a",), input_size=(224, 320), crop_pct=0.875)
    text = card.describe()
    m = re.search(r"cover (\d+)×(\d+) \(h×w\)", text)
    assert m, text
    cover_h, cover_w = int(m[1]), int(m[2])
    assert (cover_h, cover_w) == (256, 365)
    assert "center-crop 224×320" in text
    # A wide image: the height binds and gets the cover height; the width is truncated, not rounded.
    assert pre_crop_size(card, 731, 512) == (int(cover_h * 731 / 512), cover_h) == (365, 256)
    # A tall image: the width binds.
    assert pre_crop_size(card, 500, 1001) == (cover_w, int(cover_w * 1001 / 500)) == (365, 730)
    assert "int(" in text and "JPEG draft" in text
    assert "JPEG draft off" in _card(jpeg_draft=False).describe()


def test_describe_square_card_is_torchvision_resize():
    card = ModelCard(class_names=("a",), input_size=(224, 224), crop_pct=0.875)
    assert "shorter side → 256, longer side → int(256 × long / short), center-crop 224×224" in card.describe()
