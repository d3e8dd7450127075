"""The Born-Again strategy: generations of the student, each taught by the one before."""

import torch


def test_born_again_runs_end_to_end(train):
    r = train(["strategy=born_again", "strategy.generations=2", "method=kd"])
    assert r["strategy"] == "born_again"
    assert 0.0 <= r["student"]["test_acc"] <= 1.0
    assert [g["generation"] for g in r["generations"]] == [0, 1] and r["ensemble"]["params"] == 2 * 15210
    assert r["teacher"]["test_acc"] == r["generations"][0]["test_acc"]


def test_born_again_generation_g_is_taught_by_a_frozen_generation_g_minus_1(train):
    r = train(["strategy=born_again", "strategy.generations=3", "method=kd"])
    ckpt = {
        g: torch.load(r["_dir"] / f"gen{g}" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        for g in range(3)
    }
    assert not any(k.startswith("teacher.") for k in ckpt[0])  # generation 0 learns from the labels alone
    for g in (1, 2):
        for k, v in ckpt[g].items():
            if k.startswith("teacher."):  # g's teacher holds g-1's final weights, untouched by g's training
                torch.testing.assert_close(v, ckpt[g - 1]["student." + k[len("teacher.") :]])
