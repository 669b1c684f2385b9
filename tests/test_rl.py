"""`unirg-trainer rl` end to end on a tiny real Qwen3-VL and the synthetic testbed (no mocks).

The configs are shrunk so the module runs in about a minute or two on 2 CPU cores; each shrink says why.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unirg.model import GenerationConfig, load_model
from unirg.trainer.tiny_models import build_tiny_qwen3_vl
from unirg.trainer.rl import build_trainer, load_samples, study_input, train_rl
from unirg.trainer.rl_config import load_rl_config

pytestmark = pytest.mark.slow

COMPONENTS = ("embedding_cosine", "semb_substitute", "radgraph_substitute", "bleu")  # unirg-step1 offline


@pytest.fixture(autouse=True, scope="module")
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the CI machine has 2 cores shared with other work
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_qwen3_vl(
        tmp_path_factory.mktemp("tiny") / "model",
        hidden_size=64,  # ~0.3 M text parameters: a step takes seconds, not minutes
        num_layers=2,  # two decoder layers are enough for every LoRA target to get gradients
        vision_hidden_size=32,  # the smallest vision tower the config accepts
        image_size=64,  # 4 image tokens per image: short prompts
    )


def _config(tiny, testbed, out, **extra):
    values = dict(
        sft=str(tiny),
        data=str(testbed),
        output_dir=str(out),
        max_train_samples=4,  # two GRPO steps see four different studies
        num_generations=4,  # the recipe's 16 -> 4: still a group with reward variance, 4x fewer rollouts
        per_device_train_batch_size=8,  # 2 prompts x 4 rollouts per step
        max_completion_length=12,  # a few tokens per rollout are enough to score and to train
        max_steps=2,  # two optimizer steps: LoRA B moves at step 1, LoRA A (zero gradient while B = 0) at step 2
        save_steps=1,  # a checkpoint after each step, to resume from the first
        logging_steps=1,  # every step's metrics in the log history
        learning_rate=1e-3,  # 5e-6 would not visibly move a random tiny model in two steps
        gradient_checkpointing=False,  # memory saving only; slower on CPU
        image_size=64,  # decode the DICOMs small: the tiny processor resizes to 64 px anyway
        lora_r=4,  # small adapter, same code path
        lora_alpha=8,
        lora_dropout=0.0,  # deterministic forward passes
        scaling_pairs=32,  # fewer reference pairs to fit the standard scaling
        seed=0,
    )
    values.update(extra)
    return load_rl_config(preset="unirg-step1", overrides=values)


@pytest.fixture(scope="module")
def run(tiny, testbed, tmp_path_factory):
    # a start policy trained with the labeler's reading of the prior report (the demo model's prompt)
    start = tmp_path_factory.mktemp("start") / "model"
    shutil.copytree(tiny, start)
    (start / "unirg-model.json").write_text(json.dumps({"name": "tiny-findings", "prompt": {"prior_report": "findings"}}))
    out = tmp_path_factory.mktemp("rl") / "run"
    cfg = _config(start, testbed.root, out)
    setup = build_trainer(cfg)
    initial = {
        name.replace(".default", ""): param.detach().clone()
        for name, param in setup.trainer.model.named_parameters()
        if param.requires_grad
    }
    result = train_rl(cfg, setup=setup)
    return cfg, setup, result, initial


def test_grpo_logs_loss_every_component_and_zero_std_fraction(run):
    _, _, result, _ = run
    steps = [h for h in result.log_history if "loss" in h]
    assert len(steps) == 2
    for entry in steps:
        for component in COMPONENTS:
            assert f"rewards/{component}/mean" in entry
            assert f"rewards/{component}/std" in entry
        assert "frac_reward_zero_std" in entry and 0.0 <= entry["frac_reward_zero_std"] <= 1.0
        assert "reward" in entry and "reward_std" in entry
    assert result.global_step == 2


def test_every_lora_parameter_changed(run):
    _, setup, result, initial = run
    assert initial and all("lora_" in name for name in initial)  # only the adapter trains
    trained = load_file(str(result.out_dir / "adapter" / "adapter_model.safetensors"))
    assert set(trained) == set(initial)
    for name, before in initial.items():
        assert not torch.equal(before, trained[name]), f"{name} did not change"


def test_checkpoints_and_run_summary(run):
    cfg, _, result, _ = run
    for step in (1, 2):
        checkpoint = result.out_dir / "checkpoints" / f"checkpoint-{step}"
        for name in ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"):
            assert (checkpoint / name).is_file(), f"{checkpoint}/{name}"
    summary = json.loads((result.out_dir / "rl_run.json").read_text())
    assert summary["global_step"] == 2
    rows = {row["key"]: row for row in summary["rewards"]}
    assert rows["bertscore"]["component"] == "embedding_cosine" and rows["bertscore"]["real_metric"] is False
    assert rows["bertscore"]["std"] > 0 and rows["bertscore"]["effective_weight"] > 0
    assert summary["settings"]["preset"] == "unirg-step1"
    manifest = json.loads((result.out_dir / "unirg-model.json").read_text())
    assert manifest["version"].startswith("rl-") and manifest["stage"] == "rl"
    assert manifest["prompt"] == {"prior_report": "findings"}  # the start policy's prompt, kept


def test_trained_model_loads_and_drafts_through_the_plugin(run, testbed):
    cfg, _, result, _ = run
    sample = load_samples(cfg)[0]
    study = study_input(sample, size=cfg.image_size)
    for path in (result.out_dir, result.out_dir / "adapter"):  # merged checkpoint, and adapter on the SFT base
        model = load_model(path, device="cpu")
        assert model.adapter.prior_report_style == "findings"
        [draft] = model.draft([study], GenerationConfig(max_new_tokens=8))
        assert draft.model_info.version
        assert isinstance(draft.raw_text, str)
    merged = load_model(result.out_dir, device="cpu")
    assert merged.info.version == json.loads((result.out_dir / "unirg-model.json").read_text())["version"]


def test_trl_renders_the_plugins_prompt(run):
    """TRL's VLM path (placeholders filled, processor chat template) gives the plugin's prompt tokens."""
    from trl.data_utils import prepare_multimodal_messages

    cfg, setup, _, _ = run
    trainer = setup.trainer
    samples = load_samples(cfg)
    assert any(len(row["images"]) == 2 for row in trainer.train_dataset)  # a longitudinal prompt is covered
    for index in range(len(samples)):
        row = trainer.train_dataset[index]
        prompt = prepare_multimodal_messages(row["prompt"], images=row["images"])
        ids, images, fields = trainer._tokenize_prompts([prompt])
        study = study_input(samples[index], size=cfg.image_size)
        plugin_inputs, texts = setup.adapter.prepare(setup.processor, [study])
        assert list(ids[0]) == plugin_inputs["input_ids"][0].tolist()
        if study.prior_frontal is not None:
            assert "Prior report findings:" in texts[0] and "Prior report:" not in texts[0]
        assert torch.equal(torch.as_tensor(fields["image_grid_thw"]), plugin_inputs["image_grid_thw"])


def test_resume_from_a_checkpoint(run, tmp_path):
    cfg, _, first, _ = run
    checkpoint = first.out_dir / "checkpoints" / "checkpoint-1"
    resumed = train_rl(_config(Path(cfg.sft), Path(cfg.data), tmp_path / "resumed"), resume=str(checkpoint))
    assert resumed.global_step == 2
    steps = [h["step"] for h in resumed.log_history if "loss" in h]
    assert steps == [1, 2]  # step 1 restored from the checkpoint's trainer state, step 2 trained now
    assert json.loads((tmp_path / "resumed" / "rl_run.json").read_text())["resumed_from"] == str(checkpoint)


def test_rloo_with_kl(tiny, testbed, tmp_path):
    result = train_rl(_config(tiny, testbed.root, tmp_path / "rloo", algorithm="rloo", beta=0.03,
                              max_steps=1, save_steps=10))  # one step shows the option works
    [entry] = [h for h in result.log_history if "loss" in h]
    assert "kl" in entry  # KL against the start policy (adapter disabled)
    assert "rewards/embedding_cosine/mean" in entry
    assert (tmp_path / "rloo" / "model.safetensors").is_file()


def test_training_samples_leave_out_sft_held_out_patients_and_other_institutions(tiny, testbed, tmp_path):
    everything = load_samples(_config(tiny, testbed.root, tmp_path / "a", max_train_samples=None))
    sft = tmp_path / "sft"
    sft.mkdir()
    (sft / "config.json").write_text((Path(tiny) / "config.json").read_text())
    held = everything[0].patient_id
    (sft / "holdout.json").write_text(json.dumps({"patients": [held], "studies": []}))
    kept = load_samples(_config(sft, testbed.root, tmp_path / "b", max_train_samples=None))
    assert held not in {s.patient_id for s in kept}
    assert len(kept) == len(everything) - sum(s.patient_id == held for s in everything)
    institution = everything[0].institution
    only = load_samples(_config(tiny, testbed.root, tmp_path / "c", max_train_samples=None,
                                train_institutions=[institution]))
    assert only and {s.institution for s in only} == {institution}


def test_holdout_fraction_keeps_patients_out_of_rl_and_lists_them(tiny, testbed, tmp_path):
    from unirg.trainer.rl import load_split

    cfg = _config(tiny, testbed.root, tmp_path / "held", max_train_samples=None, holdout_fraction=0.3)
    train, held = load_split(cfg)
    everything = load_samples(_config(tiny, testbed.root, tmp_path / "all", max_train_samples=None))
    assert held and train
    assert {s.patient_id for s in train}.isdisjoint({s.patient_id for s in held})  # patient-level split
    assert len(train) + len(held) == len(everything)
    assert load_split(cfg)[1] == held  # seeded: the same patients every time
    setup = build_trainer(cfg)
    listed = json.loads((tmp_path / "held" / "holdout.json").read_text())
    assert listed["patients"] == sorted({s.patient_id for s in held})
    assert sorted(listed["studies"]) == sorted(s.study_id for s in held)
    assert setup.train_samples == len(train)


def test_the_cpu_configs_lora_reaches_the_vision_merger_and_not_the_tower(tiny, testbed, tmp_path):
    """The CPU config adapts the language model and the vision merger; RL changes the published merger's weights
    and leaves the tower's blocks as SFT wrote them."""
    targets = load_rl_config(Path(__file__).parents[1] / "trainer/configs/rl-cpu-demo.toml").lora_target_modules
    cfg = _config(tiny, testbed.root, tmp_path / "merger", lora_target_modules=targets, save_steps=0)
    result = train_rl(cfg)
    adapter = load_file(str(result.out_dir / "adapter" / "adapter_model.safetensors"))
    merger = {k for k in adapter if ".visual.merger." in k}
    assert merger and any(".visual.deepstack_merger_list." in k for k in adapter)
    assert any(".language_model." in k for k in adapter)
    assert not any(".visual.blocks." in k or "patch_embed" in k for k in adapter)
    sft, rl = load_file(str(Path(tiny) / "model.safetensors")), load_file(str(result.out_dir / "model.safetensors"))
    assert sft.keys() == rl.keys()
    merged_merger = [k for k in rl if ".visual.merger.linear_fc" in k and k.endswith("weight")]
    assert merged_merger and all(not torch.equal(sft[k], rl[k]) for k in merged_merger)
    tower = [k for k in rl if ".visual.blocks." in k]
    assert tower and all(torch.equal(sft[k], rl[k]) for k in tower)


def test_rl_prompts_match_sft_prompts(testbed):
    """RL builds each study's prompt exactly as `unirg-trainer sft` trained on it (text and pixels)."""
    from unirg.model.prompt import build_prompt
    from unirg.trainer.data import load_testbed
    from unirg.trainer.sft import StudyInputCache, testbed_examples

    cache = StudyInputCache(decode_size=64)
    sft_studies = {e.study_uid: cache.study(e) for e in testbed_examples(testbed.root, institutions=None)}
    checked = 0
    for sample in load_testbed(testbed.root):
        if sample.study_id not in sft_studies:
            continue
        ours, theirs = study_input(sample, size=64), sft_studies[sample.study_id]
        assert build_prompt(ours).text_only() == build_prompt(theirs).text_only()
        assert list(ours.frontal.getdata()) == list(theirs.frontal.getdata())
        checked += 1
    assert checked >= 3


def test_grpo_unirg_step2_with_the_smollm2_judge(tiny, testbed, tmp_path):
    """The `unirg-step2` config (trainer/configs/unirg-step2.toml: step 1's reward + 0.5 x the judge, KL) with
    the real SmolLM2-135M judge on CPU, shrunk to two steps of one prompt x 4 rollouts."""
    from test_judge import GGUF_NAME, _smollm2_dir

    from unirg.trainer.rl import RLResult

    config = Path(__file__).resolve().parents[1] / "trainer" / "configs" / "unirg-step2.toml"
    judge = {"backend": "transformers", "model": str(_smollm2_dir()), "gguf_file": GGUF_NAME,
             "max_new_tokens": 48, "batch_size": 4, "cache": str(tmp_path / "judge.sqlite")}
    overrides = dict(
        sft=str(tiny), data=str(testbed.root), output_dir=str(tmp_path / "step2"), judge=judge,
        max_train_samples=2, num_generations=4, per_device_train_batch_size=4,  # one prompt x 4 rollouts a step
        gradient_accumulation_steps=1, max_completion_length=8, max_steps=2, save_steps=10, logging_steps=1,
        learning_rate=1e-3, gradient_checkpointing=False, image_size=64, lora_r=4, lora_alpha=8,
        lora_dropout=0.0, scaling_pairs=16, seed=0,
    )
    cfg = load_rl_config(config, overrides=overrides)
    assert cfg.preset == "unirg-step2" and cfg.reward_components["judge"] == 0.5 and cfg.beta == 0.03
    result: RLResult = train_rl(cfg)
    steps = [h for h in result.log_history if "loss" in h]
    assert len(steps) == 2 and result.global_step == 2
    for entry in steps:
        assert "rewards/judge/mean" in entry and "judge/parse_rate" in entry and "kl" in entry
        assert 0.0 <= entry["judge/parse_rate"] <= 1.0
    # every rollout was judged; the unparsed ones are counted (missing rewards, not zeros)
    print(f"\nstep2 judge: {result.judge}, parse rate per step {[e['judge/parse_rate'] for e in steps]}")
    assert result.judge["judged"] == 8, result.judge
    assert result.judge["unparsed"] == sum(round(e["judge/unparsed"]) for e in steps)
    assert json.loads((tmp_path / "step2" / "rl_run.json").read_text())["judge"] == result.judge
