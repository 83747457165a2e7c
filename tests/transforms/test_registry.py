"""The device registry files (civicflow/registry.py) as the decoder and staging use them."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from civicflow.ingest.samples import birmingham_parking_messages
from civicflow.registry import DEFAULT_REGISTRY_DIR, RegistryError, load_registry
from civicflow.transforms.decode import Limits, decode_message
from civicflow.transforms.lorawan import registry_problems

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def test_shipped_registry_lists_birminghams_car_parks_with_their_capacity():
    registry = load_registry(DEFAULT_REGISTRY_DIR)
    assert DEFAULT_REGISTRY_DIR == ROOT / "registry"
    assert sorted(registry.councils) == ["aberdeen", "birmingham"]
    assert registry.councils["birmingham"].accept_unknown_devices is False
    assert len(registry.councils["birmingham"].devices) == 30
    assert registry.device("birmingham", "bhmbccmkt01").total_spots == 577
    assert registry.device("birmingham", "others-cccps133").total_spots == 4675
    assert registry_problems(registry) == []


def test_birmingham_sample_decodes_the_same_with_the_shipped_registry():
    registry = load_registry()
    reasons: collections.Counter = collections.Counter()
    readings = 0
    for topic, payload in birmingham_parking_messages():
        out = decode_message(topic.encode(), payload, Limits(), registry=registry)
        readings += len(out.readings)
        reasons.update(r.reason.value for r in out.rejections)
    assert reasons == {"occupied_exceeds_total": 33, "out_of_range": 9}
    assert readings == 12474 - 42


def test_sample_registry_covers_the_sample_uplinks():
    registry = load_registry(ROOT / "samples" / "lorawan" / "registry")
    assert registry_problems(registry) == []
    match = registry.match_tts("application-tts-name", "ttn", "eui-1000000000000005", None)
    assert (match.council, match.device.device_id, match.device.bin_depth_mm) == ("example", "bin-5", 2500)


def write(tmp_path: Path, name: str, text: str) -> Path:
    (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("files", "detail"),
    [
        ({"leeds.toml": 'council = "york"\n'}, "declares council 'york'; rename the file to york.toml"),
        ({"leeds.toml": "council = \n"}, "cannot read device registry"),
        (
            {
                "leeds.toml": 'council = "leeds"\n[[devices]]\ndevice_id = "p1"\ndomain = "parking"\n'
                "lat = 53.8\n"
            },
            "devices.0: Value error, lat and lon come together",
        ),
        (
            {"leeds.toml": 'council = "leeds"\n[[devices]]\ndevice_id = "P 1"\ndomain = "parking"\n'},
            "devices.0.device_id",
        ),
        (
            {
                "leeds.toml": 'council = "leeds"\n[[devices]]\ndevice_id = "b1"\ndomain = "waste"\n'
                "total_spots = 5\n"
            },
            "total_spots is for parking devices",
        ),
        (
            {
                "leeds.toml": 'council = "leeds"\n[[devices]]\ndevice_id = "p1"\ndomain = "parking"\n'
                '[[devices]]\ndevice_id = "p1"\ndomain = "parking"\n'
            },
            "device_id 'p1' is listed twice",
        ),
        (
            {
                "leeds.toml": 'council = "leeds"\n[[devices]]\ndevice_id = "s1"\ndomain = "air_quality"\n'
                'model = "milesight_am319"\nlorawan = { dev_eui = "1000000000000001" }\n',
                "york.toml": 'council = "york"\n[[devices]]\ndevice_id = "s9"\ndomain = "air_quality"\n'
                'model = "milesight_am319"\nlorawan = { dev_eui = "1000000000000001" }\n',
            },
            "DevEUI '1000000000000001' is claimed by council 'leeds' and 'york'",
        ),
        (
            {
                "leeds.toml": 'council = "leeds"\n[[devices]]\ndevice_id = "s1"\ndomain = "air_quality"\n'
                'lorawan = { dev_eui = "1000000000000001" }\n'
            },
            "a LoRaWAN device needs the model",
        ),
        ({"leeds.toml": 'council = "leeds"\ncolour = "red"\n'}, "colour: Extra inputs are not permitted"),
    ],
)
def test_invalid_registry_files_fail_with_what_to_fix(tmp_path, files, detail):
    for name, text in files.items():
        write(tmp_path, name, text)
    with pytest.raises(RegistryError) as info:
        load_registry(tmp_path)
    assert detail in str(info.value)


def test_models_without_a_profile_or_of_another_domain_are_reported(tmp_path):
    write(
        tmp_path,
        "leeds.toml",
        'council = "leeds"\n'
        '[[devices]]\ndevice_id = "s1"\ndomain = "air_quality"\nmodel = "acme_9000"\n'
        'lorawan = { dev_eui = "1000000000000001" }\n'
        '[[applications]]\ntts = "bays@leeds"\ndomain = "waste"\nmodel = "nwave_g4_nps"\n',
    )
    problems = registry_problems(load_registry(tmp_path))
    assert problems[0].startswith("registry/leeds.toml: device 's1' has model 'acme_9000'; known models: ")
    assert problems[1] == (
        "registry/leeds.toml: application 'bays@leeds' is waste but model 'nwave_g4_nps' decodes parking"
    )


def test_a_missing_registry_directory_says_how_to_create_it(tmp_path):
    with pytest.raises(RegistryError, match="create it with one <council>.toml per council"):
        load_registry(tmp_path / "nowhere")


def test_a_council_names_the_licence_its_data_is_published_under(tmp_path):
    shipped = load_registry(DEFAULT_REGISTRY_DIR).licences()
    assert shipped["aberdeen"]["name"] == "ODbL-1.0"  # citizen stations: not OGL
    assert "birmingham" not in shipped  # council data: the default OGL
    (tmp_path / "leeds.toml").write_text(
        'council = "leeds"\n[licence]\nname = "CC-BY-4.0"\npath = "ftp://x"\ntitle = "CC BY"\n'
    )
    with pytest.raises(RegistryError, match="path"):
        load_registry(tmp_path)
