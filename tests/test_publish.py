"""Publishing against a local stand-in for the Hub HTTP API (tests/hub_stand_in.py).

The real `model_cards.publish` code and the real huggingface_hub client run unchanged; only the
server is local (127.0.0.1). The uploaded folder is then loaded in a fresh Python process that cannot
import this repository, with `trust_remote_code=True`, and compared with the original model.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import ModelCard

from checkpoint_folder import (
    CLASS_NAMES,
    EVAL_RESULTS,
    IMAGE_SIZE,
    TRAINING_SUMMARY,
    add_training_leftovers,
    build_model,
    save_checkpoint_folder,
)
from hub_stand_in import HubStandIn
from isolated_python import run_python_without_repository
from model_cards import IncompleteCheckpointError, LicenseChoice, PublishError, publish_folder, write_model_card
from model_cards.publish import main as publish_main

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
# trained on a Hub dataset, so the card's model-index holds the measured numbers
HUB_DATASET_SUMMARY = {**TRAINING_SUMMARY, "dataset": "someone/camvid", "dataset_id": "someone/camvid"}
TOKEN = "hf_stand_in_write_token"
USER = "stand-in-user"


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A checkpoint folder as training leaves it (card written, plus training leftovers), and reference outputs."""
    root = tmp_path_factory.mktemp("publish")
    model = build_model()
    folder = save_checkpoint_folder(root / "protoseg-tiny-camvid", model)
    write_model_card(folder, HUB_DATASET_SUMMARY)
    leftovers = add_training_leftovers(folder)

    pixel_values = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        logits = model(pixel_values=pixel_values).logits
    reference_path = root / "reference.pt"  # outside the folder: never uploaded
    torch.save({"pixel_values": pixel_values, "logits": logits, "prototypes": model.prototypes.clone()}, reference_path)
    return {"folder": folder, "leftovers": leftovers, "reference_path": reference_path}


@pytest.fixture
def checkpoint(trained_checkpoint: dict, tmp_path: Path) -> Path:
    """A private copy of the checkpoint folder (publishing re-renders its card)."""
    copy = tmp_path / trained_checkpoint["folder"].name
    shutil.copytree(trained_checkpoint["folder"], copy)
    return copy


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubStandIn]:
    """The stand-in Hub, with huggingface_hub's defaults pointed at it and HTTP allowed (loopback only)."""
    with HubStandIn(tmp_path / "hub_storage", valid_token=TOKEN, user_name=USER) as stand_in:
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # conftest sets it for the suite
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)  # the stand-in speaks LFS
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", stand_in.endpoint)  # any default URL -> loopback
        monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no_cached_token"))
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
        yield stand_in


def _expected_uploads(folder: Path) -> set[str]:
    python_files = {path.name for path in folder.glob("*.py")}
    assert {"configuration_protoseg.py", "modeling_protoseg.py"} <= python_files
    return {
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "eval_results.json",
        "training_summary.json",
        *python_files,
    }


def _routes(stand_in: HubStandIn) -> list[str]:
    """Requests received, without huggingface_hub's once-per-process user-agent lookup (answered 404)."""
    return [
        f"{request.method} {request.path}"
        for request in stand_in.requests
        if request.path != "/api/agent-harnesses"
    ]


def test_publish_uploads_exactly_the_model_files_in_one_commit(checkpoint: Path, hub: HubStandIn) -> None:
    repo_id = f"{USER}/protoseg-tiny-camvid"
    commit = publish_folder(checkpoint, repo_id, token=TOKEN, endpoint=hub.endpoint)

    assert len(hub.commits) == 1
    recorded = hub.commits[0]
    assert commit.oid == recorded.oid
    assert commit == f"{hub.endpoint}/{repo_id}/commit/{recorded.oid}"

    uploaded = set(recorded.regular_files) | set(recorded.lfs_files)
    assert uploaded == _expected_uploads(checkpoint)
    assert recorded.lfs_files == ["model.safetensors"]  # weights (with prototypes) through the LFS protocol
    assert recorded.deleted_files == []
    remote_folder = hub.repo_folder(repo_id)
    assert {path.relative_to(remote_folder).as_posix() for path in remote_folder.rglob("*") if path.is_file()} == uploaded
    for name in uploaded:
        assert (remote_folder / name).read_bytes() == (checkpoint / name).read_bytes(), name

    config = json.loads((remote_folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_protoseg.ProtoSegConfig",
        "AutoModelForSemanticSegmentation": "modeling_protoseg.ProtoSegForSemanticSegmentation",
    }
    # requests in order: token check, repo, card validation, upload modes, LFS upload, one commit
    routes = _routes(hub)
    assert routes[:4] == [
        "GET /api/whoami-v2",
        "POST /api/repos/create",
        "POST /api/validate-yaml",
        f"POST /api/models/{repo_id}/preupload/main",
    ]
    assert routes[-1] == f"POST /api/models/{repo_id}/commit/main"
    assert sum(route.endswith("/commit/main") for route in routes) == 1


def test_training_leftovers_are_not_uploaded(checkpoint: Path, hub: HubStandIn, trained_checkpoint: dict) -> None:
    publish_folder(checkpoint, f"{USER}/leftovers", token=TOKEN, endpoint=hub.endpoint)
    uploaded = set(hub.commits[0].regular_files) | set(hub.commits[0].lfs_files)
    for leftover in trained_checkpoint["leftovers"]:
        assert (checkpoint / leftover).is_file()
        assert leftover not in uploaded


def test_uploaded_card_is_ours_with_the_repo_id_and_real_results(checkpoint: Path, hub: HubStandIn) -> None:
    repo_id = f"{USER}/protoseg-card"
    publish_folder(checkpoint, repo_id, token=TOKEN, endpoint=hub.endpoint)
    remote_card_path = hub.repo_folder(repo_id) / "README.md"
    assert remote_card_path.read_text() == (checkpoint / "README.md").read_text()  # local folder = what was published

    card = ModelCard.load(remote_card_path)
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "image-segmentation"
    assert card.data.model_name == "protoseg-card"
    mean_iou = next(result for result in card.data.eval_results if result.metric_type == "mean_iou")
    assert mean_iou.metric_value == EVAL_RESULTS["mean_iou"]
    assert mean_iou.dataset_split == "validation"
    assert f'pipeline("image-segmentation", model="{repo_id}", trust_remote_code=True)' in card.text
    assert "| Training steps | 200 |" in card.text  # training summary kept from the first rendering
    for name, iou in zip(CLASS_NAMES, EVAL_RESULTS["per_category_iou"]):
        assert f"| {name} | {100 * iou:.2f} |" in card.text
    assert "More Information Needed" not in card.text  # not the generic huggingface_hub template


def test_publishing_replaces_a_generic_card_already_on_the_hub(checkpoint: Path, hub: HubStandIn) -> None:
    repo_id = f"{USER}/existing"
    generic_card = ModelCard.from_template(huggingface_hub.ModelCardData(library_name="transformers"))
    generic_repo = checkpoint.parent / "generic"
    generic_repo.mkdir()
    generic_card.save(generic_repo / "README.md")
    huggingface_hub.HfApi(endpoint=hub.endpoint, token=TOKEN).create_repo(repo_id)
    huggingface_hub.HfApi(endpoint=hub.endpoint, token=TOKEN).upload_folder(
        repo_id=repo_id, folder_path=generic_repo, commit_message="generic push"
    )
    assert "More Information Needed" in (hub.repo_folder(repo_id) / "README.md").read_text()

    publish_folder(checkpoint, repo_id, token=TOKEN, endpoint=hub.endpoint)  # repo exists: create_repo gets 409
    assert len(hub.commits) == 2
    assert "README.md" in hub.commits[1].regular_files
    remote_card = (hub.repo_folder(repo_id) / "README.md").read_text()
    assert remote_card == (checkpoint / "README.md").read_text()
    assert "More Information Needed" not in remote_card


FRESH_PROCESS_CHECK = r"""
import importlib.util
import json
import sys
from pathlib import Path

folder, reference_path, repository_root = sys.argv[1], sys.argv[2], Path(sys.argv[3])
# The repository is not on sys.path here (python -I, cwd elsewhere); the import blocker of
# isolated_python also rules out an editable install, so only the uploaded code can be used.
assert not any(Path(entry or ".").resolve() == repository_root for entry in sys.path), sys.path
try:
    importlib.util.find_spec("modeling_protoseg")
    raise AssertionError("modeling_protoseg is importable")
except ModuleNotFoundError:
    pass

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline

reference = torch.load(reference_path)
model = AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True).eval()
with torch.no_grad():
    logits = model(pixel_values=reference["pixel_values"]).logits

image = Image.fromarray((torch.rand(48, 80, 3, generator=torch.Generator().manual_seed(3)) * 255).byte().numpy())
segmenter = pipeline("image-segmentation", model=folder, trust_remote_code=True)
segments = segmenter(image)

processor = AutoImageProcessor.from_pretrained(folder)
with torch.no_grad():
    outputs = model(**processor(images=image, return_tensors="pt"))
label_map = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]
pipeline_label_map = torch.full(label_map.shape, -1)
label2id = model.config.label2id
for segment in segments:
    mask = torch.from_numpy(__import__("numpy").array(segment["mask"]) > 0)
    assert bool((pipeline_label_map[mask] == -1).all()), "pipeline masks overlap"
    pipeline_label_map[mask] = label2id[segment["label"]]

def is_repository_source(file_name):
    # a file of this repository's source tree (a virtual environment inside the checkout does not count)
    path = Path(file_name).resolve()
    return repository_root in path.parents and not {"site-packages", "dist-packages"} & set(path.parts)

modules_from_repository = sorted(
    name for name, module in list(sys.modules.items())
    if getattr(module, "__file__", None) and is_repository_source(module.__file__)
)
print(json.dumps({
    "model_module": type(model).__module__,
    "max_logit_difference": float((logits - reference["logits"]).abs().max()),
    "logits_shape": list(logits.shape),
    "prototypes_equal": bool(torch.equal(model.prototypes, reference["prototypes"])),
    "segment_labels": sorted(segment["label"] for segment in segments),
    "mask_sizes": sorted({tuple(segment["mask"].size) for segment in segments}),
    "pipeline_matches_model": bool(torch.equal(pipeline_label_map, label_map)),
    "modules_from_repository": modules_from_repository,
}))
"""


def test_uploaded_folder_loads_in_a_fresh_process_without_this_repository(
    checkpoint: Path, hub: HubStandIn, trained_checkpoint: dict, tmp_path: Path
) -> None:
    repo_id = f"{USER}/protoseg-remote-code"
    publish_folder(checkpoint, repo_id, token=TOKEN, endpoint=hub.endpoint)
    uploaded_folder = hub.repo_folder(repo_id)

    work_dir = tmp_path / "fresh"
    work_dir.mkdir()
    completed = run_python_without_repository(
        FRESH_PROCESS_CHECK,
        str(uploaded_folder),
        str(trained_checkpoint["reference_path"]),
        str(REPOSITORY_ROOT),
        cwd=work_dir,
        environment={
            "HF_HOME": str(work_dir / "hf_home"),
            "HF_MODULES_CACHE": str(work_dir / "modules"),
            "OMP_NUM_THREADS": "1",
        },
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])

    assert result["model_module"].startswith("transformers_modules.")  # the uploaded code, not this repository
    assert result["modules_from_repository"] == []
    assert result["prototypes_equal"]
    assert result["logits_shape"] == [2, len(CLASS_NAMES), IMAGE_SIZE // 4, IMAGE_SIZE // 4]
    assert result["max_logit_difference"] <= 1e-5
    assert result["segment_labels"] and set(result["segment_labels"]) <= set(CLASS_NAMES)
    assert result["mask_sizes"] == [[80, 48]]
    assert result["pipeline_matches_model"]


def _cli_environment(tmp_path: Path, endpoint: str, token: str | None) -> dict[str, str]:
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("HF_", "HUGGING_FACE_", "PYTHON")) and name != "TRANSFORMERS_OFFLINE"
    }
    environment.update(HF_ENDPOINT=endpoint, HF_HUB_DISABLE_XET="1", HF_HOME=str(tmp_path / "cli_hf_home"))
    if token is not None:
        environment["HF_TOKEN"] = token
    return environment


def test_cli_publishes_a_folder(checkpoint: Path, hub: HubStandIn, tmp_path: Path) -> None:
    repo_id = f"{USER}/from-cli"
    completed = subprocess.run(
        [sys.executable, "-m", "model_cards.publish", str(checkpoint), "--repo-id", repo_id, "--private"],
        cwd=REPOSITORY_ROOT,
        env=_cli_environment(tmp_path, hub.endpoint, TOKEN),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert f"Commit: {hub.endpoint}/{repo_id}/commit/{hub.commits[0].oid}" in completed.stdout
    assert hub.repos[repo_id]["private"] is True
    assert (hub.repo_folder(repo_id) / "model.safetensors").read_bytes() == (checkpoint / "model.safetensors").read_bytes()


def test_cli_without_token_explains_what_to_do_and_sends_nothing(
    checkpoint: Path, hub: HubStandIn, tmp_path: Path
) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "model_cards.publish", str(checkpoint), "--repo-id", f"{USER}/no-token"],
        cwd=REPOSITORY_ROOT,
        env=_cli_environment(tmp_path, hub.endpoint, token=None),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 1
    assert "Published" not in completed.stdout
    for advice in ("No Hugging Face token found", "nothing was published", "hf auth login", "HF_TOKEN", "--hub_token"):
        assert advice in completed.stderr
    assert f"python -m model_cards.publish {checkpoint} --repo-id {USER}/no-token" in completed.stderr
    assert _routes(hub) == []


def test_unreachable_hub_is_a_clear_error_and_the_folder_stays_complete(checkpoint: Path, hub: HubStandIn) -> None:
    with socket.socket() as unused:  # a loopback port nobody listens on
        unused.bind(("127.0.0.1", 0))
        closed_endpoint = f"http://127.0.0.1:{unused.getsockname()[1]}"
    with pytest.raises(PublishError, match="Could not reach the Hub") as raised:
        publish_folder(checkpoint, f"{USER}/offline", token=TOKEN, endpoint=closed_endpoint)
    message = str(raised.value)
    assert "Nothing was published" in message
    assert f"python -m model_cards.publish {checkpoint} --repo-id {USER}/offline" in message
    assert (checkpoint / "README.md").is_file() and (checkpoint / "model.safetensors").is_file()


def test_failed_commit_after_weight_upload_is_not_reported_as_published(checkpoint: Path, hub: HubStandIn) -> None:
    repo_id = f"{USER}/half-uploaded"
    hub.fail_commit_status = 500
    with pytest.raises(PublishError, match="HTTP 500") as raised:
        publish_folder(checkpoint, repo_id, token=TOKEN, endpoint=hub.endpoint)
    assert "Nothing was published (no commit was made)" in str(raised.value)
    assert any(request.method == "PUT" for request in hub.requests)  # the weights did reach LFS storage ...
    assert hub.commits == [] and hub.repos[repo_id]["files"] == {}  # ... but the repository holds nothing
    assert not hub.repo_folder(repo_id).exists()


def test_rejected_token_is_a_clear_error(checkpoint: Path, hub: HubStandIn) -> None:
    with pytest.raises(PublishError, match=r"rejected the token \(401\).*hf auth login"):
        publish_folder(checkpoint, f"{USER}/bad-token", token="hf_not_valid", endpoint=hub.endpoint)
    assert _routes(hub) == ["GET /api/whoami-v2"]


def test_offline_mode_refuses_before_any_request(
    checkpoint: Path, hub: HubStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PublishError, match="Unset HF_HUB_OFFLINE"):
        publish_folder(checkpoint, f"{USER}/offline-mode", token=TOKEN, endpoint=hub.endpoint)
    assert _routes(hub) == []


def test_incomplete_folder_lists_what_is_missing_before_any_request(checkpoint: Path, hub: HubStandIn) -> None:
    for name in ("preprocessor_config.json", "prototypes.py", "README.md", "eval_results.json"):
        (checkpoint / name).unlink(missing_ok=True)
    config_path = checkpoint / "config.json"
    config = json.loads(config_path.read_text())
    del config["auto_map"]["AutoModelForSemanticSegmentation"]
    config_path.write_text(json.dumps(config))

    with pytest.raises(IncompleteCheckpointError) as raised:
        publish_folder(checkpoint, f"{USER}/incomplete", token=TOKEN, endpoint=hub.endpoint)
    message = str(raised.value)
    assert "nothing was published" in message
    assert "preprocessor_config.json" in message
    assert "auto_map['AutoModelForSemanticSegmentation']" in message
    assert "README.md or eval_results.json" in message
    assert _routes(hub) == []


def test_remote_code_relative_imports_must_be_in_the_folder(checkpoint: Path, hub: HubStandIn) -> None:
    modeling_source = (checkpoint / "modeling_protoseg.py").read_text()
    relative_imports = {line.split()[1][1:] for line in modeling_source.splitlines() if line.startswith("from .")}
    assert relative_imports, "modeling_protoseg.py has no relative import to check"
    missing_module = sorted(relative_imports - {"configuration_protoseg"})[0]
    (checkpoint / f"{missing_module}.py").unlink()
    with pytest.raises(IncompleteCheckpointError, match=f"{missing_module}.py"):
        publish_folder(checkpoint, f"{USER}/no-helper-module", token=TOKEN, endpoint=hub.endpoint)
    assert _routes(hub) == []


def test_an_encoder_file_named_by_the_nested_auto_map_must_be_in_the_folder(tmp_path: Path) -> None:
    from tiny_models import tiny_efficientnet_lite_encoder_config, tiny_protoseg_config

    from model_cards.publish import find_missing_files
    from modeling_protoseg import ProtoSegForSemanticSegmentation

    folder = tmp_path / "protoseg-lite"
    config = tiny_protoseg_config(encoder_config=tiny_efficientnet_lite_encoder_config())
    ProtoSegForSemanticSegmentation(config).save_pretrained(folder)
    encoder_auto_map = json.loads((folder / "config.json").read_text())["encoder_config"]["auto_map"]
    backbone_module = encoder_auto_map["AutoBackbone"].rsplit(".", 1)[0]
    complete = find_missing_files(folder)
    assert not any(backbone_module in line for line in complete)
    (folder / f"{backbone_module}.py").unlink()
    assert f"{backbone_module}.py (the encoder's code, named by config.json encoder_config.auto_map)" in (
        find_missing_files(folder)
    )


def test_weights_without_prototypes_are_refused(checkpoint: Path, hub: HubStandIn) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(checkpoint / "model.safetensors")
    save_file({name: tensor for name, tensor in weights.items() if not name.endswith("prototypes")},
              checkpoint / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(IncompleteCheckpointError, match="prototype buffer"):
        publish_folder(checkpoint, f"{USER}/no-prototypes", token=TOKEN, endpoint=hub.endpoint)
    assert _routes(hub) == []


def test_linear_baseline_publishes_without_remote_code(hub: HubStandIn, tmp_path: Path) -> None:
    from transformers import AutoModelForSemanticSegmentation, SegformerForSemanticSegmentation

    from tiny_models import tiny_segformer_encoder_config

    config = tiny_segformer_encoder_config(id2label=dict(enumerate(CLASS_NAMES)))
    baseline = SegformerForSemanticSegmentation(config).eval()
    folder = save_checkpoint_folder(tmp_path / "baseline", baseline)
    repo_id = f"{USER}/baseline"
    publish_folder(folder, repo_id, token=TOKEN, endpoint=hub.endpoint)  # card rendered from eval_results.json

    uploaded = set(hub.commits[0].regular_files) | set(hub.commits[0].lfs_files)
    assert uploaded == {"README.md", "config.json", "model.safetensors", "preprocessor_config.json", "eval_results.json"}
    assert "trust_remote_code" not in (hub.repo_folder(repo_id) / "README.md").read_text()
    reloaded = AutoModelForSemanticSegmentation.from_pretrained(hub.repo_folder(repo_id)).eval()
    pixel_values = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        assert torch.equal(reloaded(pixel_values).logits, baseline(pixel_values).logits)


def test_publishing_the_same_folder_again_is_a_safe_no_op(checkpoint: Path, hub: HubStandIn) -> None:
    repo_id = f"{USER}/republish"
    first = publish_folder(checkpoint, repo_id, token=TOKEN, endpoint=hub.endpoint)
    again = publish_folder(checkpoint, repo_id, token=TOKEN, endpoint=hub.endpoint)  # e.g. a retry after a lost answer
    assert len(hub.commits) == 1  # unchanged files are skipped: no second commit
    assert again.oid == first.oid
    assert f"GET /api/models/{repo_id}/revision/main" in _routes(hub)


def test_lost_commit_answer_is_not_reported_as_published_and_a_retry_is_safe(
    checkpoint: Path, hub: HubStandIn
) -> None:
    repo_id = f"{USER}/lost-answer"
    hub.drop_commit_response = True
    with pytest.raises(PublishError, match="outcome is unknown") as raised:
        publish_folder(checkpoint, repo_id, token=TOKEN, endpoint=hub.endpoint)
    assert "Publishing again is safe" in str(raised.value)
    assert "Nothing was published" not in str(raised.value)  # it may well have been: do not claim either way
    assert len(hub.commits) == 1  # the stand-in did apply it

    hub.drop_commit_response = False
    retried = publish_folder(checkpoint, repo_id, token=TOKEN, endpoint=hub.endpoint)
    assert retried.oid == hub.commits[0].oid and len(hub.commits) == 1


def test_a_licence_chosen_at_publishing_is_recorded_in_the_summary_and_the_card(
    checkpoint: Path, hub: HubStandIn
) -> None:
    repo_id = f"{USER}/licensed"
    publish_folder(checkpoint, repo_id, token=TOKEN, endpoint=hub.endpoint, license=LicenseChoice("cc-by-nc-4.0"))
    card = ModelCard.load(hub.repo_folder(repo_id) / "README.md")
    assert card.data.license == "cc-by-nc-4.0" and card.data.license_name is None
    assert "`cc-by-nc-4.0`, chosen by whoever trained or published the model" in card.text
    assert "| Training steps | 200 |" in card.text  # the rest of the training summary is kept
    saved = json.loads((checkpoint / "training_summary.json").read_text())
    assert saved["license"] == "cc-by-nc-4.0" and saved["max_steps"] == 200
    assert json.loads((hub.repo_folder(repo_id) / "training_summary.json").read_text()) == saved


def test_a_licence_for_a_hand_written_card_is_refused_before_any_request(checkpoint: Path, hub: HubStandIn) -> None:
    (checkpoint / "README.md").write_text("---\nlicense: mit\n---\n# My own card\n")
    with pytest.raises(PublishError, match="was not rendered by model_cards, so --license cannot be written into it"):
        publish_folder(checkpoint, f"{USER}/own-card", token=TOKEN, endpoint=hub.endpoint, license=LicenseChoice("mit"))
    assert (checkpoint / "README.md").read_text().endswith("# My own card\n") and _routes(hub) == []


def test_cli_refuses_a_licence_the_hub_would_refuse_before_any_request(
    checkpoint: Path, hub: HubStandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = [str(checkpoint), "--repo-id", f"{USER}/x", "--license", "other", "--license-name", "mine"]
    assert publish_main(arguments) == 2
    message = "--license other needs --license_name (an id such as my-license-1.0) and --license_link"
    assert message in capsys.readouterr().err
    assert _routes(hub) == []
    with pytest.raises(ValueError, match="'license' must be a Hub licence id in lower case"):
        LicenseChoice("MIT")
