from pretrainer.config import compose
from pretrainer.stages.study import _arms


def test_study_arms_share_the_recipe_and_add_a_labels_only_baseline():
    plain = _arms(compose("fashion_ae"))
    assert [a[0] for a in plain] == ["pretrained", "scratch"]
    semi = _arms(compose("fashion_ae", ["finetune.semi_supervised=fixmatch",
                                        "study.linear_probe=true"]))
    assert semi == [("pretrained", "pretrained", "full", "fixmatch"),
                    ("scratch", "scratch", "full", "fixmatch"),
                    ("scratch_labels_only", "scratch", "full", "none"),
                    ("linear_probe", "pretrained", "linear_probe", "none")]
