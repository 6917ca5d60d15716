"""make review's pure parts: masking, grouping, choosing what to list, the YAML it writes."""
import datetime as dt
import itertools
import json
import random
import re
import time

import pytest
import sqlalchemy as sa
from rasa.shared.nlu.training_data.formats.rasa_yaml import RasaYAMLReader

from lakala_server import review as rv


@pytest.mark.parametrize(
    "text, masked",
    [
        ("尾号6721", "尾号<number>"),
        ("尾号６７２１", "尾号<number>"),  # full-width digits
        ("尾号67 21", "尾号<number>"),
        ("尾号67-21", "尾号<number>"),
        ("尾号6 7 2 1", "尾号<number>"),
        ("尾号****", "尾号<number>"),  # how the tracker store writes a tail
        ("尾号六七二一", "尾号<number>"),
        ("尾号٦٧٢١", "尾号<number>"),  # Arabic-Indic digits
        ("13800006721", "<mobile>"),
        ("手机138-0000-6721", "手机<mobile>"),
        ("手机138 0000 6721了", "手机<mobile>了"),
        ("手机+86 13800006721", "手机<mobile>"),
        ("手机１３８００００６７２１", "手机<mobile>"),
        ("手机138－0000－6721", "手机<mobile>"),  # full-width dashes
        ("终端K7306118", "终端<terminal_id>"),
        ("终端号 k730-6118 呢", "终端号 <terminal_id> 呢"),
        ("终端3009 1254", "终端<terminal_id>"),
        ("终端30091254", "终端<terminal_id>"),
        ("终端Ｋ７３０６１１８", "终端<terminal_id>"),
        ("邮箱zhang.san@qq.com", "邮箱<email>"),
        ("邮箱zhang.san＠qq.com谢谢", "邮箱<email>谢谢"),
        ("身份证11010519491231002X", "身份证<id_card>"),
        ("身份证110105194912310021", "身份证<id_card>"),
        ("卡号6222 0000 1111 2222", "卡号<number>"),
        ("我是oWx1a2b3c4d5e6f7g8h9i0jklmn", "我是<id>"),
        ("座机021-12345678", "座机<number>"),
    ],
)
def test_identifying_details_are_masked(text, masked):
    assert rv.mask(text) == masked


@pytest.mark.parametrize(
    "text",
    ["押金能退吗", "押金2个", "3个月没刷卡", "两三个月", "asdf jkl", "password", "pos机", "用了123天", "POS机不用了"],
)
def test_ordinary_text_is_kept(text):
    assert rv.mask(text) == text


def test_mask_keeps_the_rest_as_typed():
    # Traditional and full-width characters outside the masked span are left as they were.
    assert rv.mask("終端號Ｋ７３０６１１８，尾號６７２１！") == "終端號<terminal_id>，尾號<number>！"


def test_sender_id_in_the_text_is_masked():
    assert rv.mask("我的id是wx_user_alpha", ["wx_user_alpha"]) == "我的id是<id>"


def test_normalize_folds_width_case_punctuation_and_spaces():
    assert rv.normalize("ＰＯＳ机， 怎么  注销？！") == rv.normalize("pos机怎么注销") == "pos机怎么注销"
    assert rv.normalize("😀 ？？") == ""


def levenshtein(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def test_bounded_distance_agrees_with_levenshtein():
    rng = random.Random(7)
    alphabet = "押金退吗注销ab"
    for _ in range(3000):
        a = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 9)))
        b = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 9)))
        limit = rng.randint(0, 3)
        assert rv.within_distance(a, b, limit) == (levenshtein(a, b) <= limit), (a, b, limit)


def test_allowed_distance_short_and_long():
    assert [rv.allowed_distance(n) for n in (2, 3, 4, 7, 8, 20)] == [0, 0, 1, 1, 2, 2]
    assert rv.allowed_distance(40) == 4 and rv.allowed_distance(100) == 10


def msg(text, intent="ask_deposit", confidence=0.5, reason="low", ts=1_700_000_000.0, sender="s1"):
    return rv.Listed(text, intent, confidence, reason, ts, sender)


def test_grouping_identical_and_near_messages():
    groups = rv.group_messages(
        [
            msg("机器那个事咋整", "deregister_terminal", 0.5, sender="a"),
            msg("机器那个事，咋整？", "deregister_terminal", 0.3, "fallback", sender="a"),
            msg("机器那个事咋整啊", "deregister_terminal", 0.4, sender="b", ts=1_700_090_000.0),
            msg("押金", "ask_deposit", 0.55, sender="c"),
            msg("你好", "greet", 0.55, sender="c"),  # short: only identical texts group
        ]
    )
    first = groups[0]
    assert first.count == 3 and first.senders == 2
    assert first.intent == "deregister_terminal"
    assert first.confidence == pytest.approx(0.4)
    assert {first.text, *first.variants} == {"机器那个事咋整", "机器那个事，咋整？", "机器那个事咋整啊"}
    assert first.reasons == {"low": 2, "fallback": 1}
    assert (first.first_seen, first.last_seen) == (1_700_000_000.0, 1_700_090_000.0)
    assert sorted(g.text for g in groups[1:]) == ["你好", "押金"]


def test_different_questions_are_not_grouped():
    texts = ["押金能退吗", "违约金能退吗", "押金怎么退", "怎么注销终端", "怎么注销账户"]
    assert len(rv.group_messages(msg(t) for t in texts)) == len(texts)


def test_long_messages_group_by_ratio():
    base = "我的机器三个月没有刷卡了现在提示已经沉睡了请问应该怎么重新激活才能继续用"
    near = base.replace("请问", "请教一下")  # 3 edits on about 40 characters
    far = "我想问一下押金退还的具体流程是什么需要准备哪些材料去哪里办理多久能到账呢"
    groups = rv.group_messages([msg(base), msg(near), msg(far)])
    assert sorted(g.count for g in groups) == [1, 2]


def naive_groups(keys):
    """Reference: every key joins the first group (in creation order) it is near to."""
    groups = []
    for key in keys:
        for group in groups:
            if rv.within_distance(key, group[0], rv.allowed_distance(max(len(key), len(group[0])))):
                group.append(key)
                break
        else:
            groups.append([key])
    return sorted(sorted(g) for g in groups)


def test_indexed_grouping_matches_comparing_with_every_group():
    rng = random.Random(3)
    for alphabet, longest in (("押金退吗ab", 12), ("押金退吗注销终端机ab", 40)):
        keys = []
        for _ in range(400):
            if keys and rng.random() < 0.5:  # an edited copy of an earlier key
                chars = list(rng.choice(keys))
                for _ in range(rng.randint(1, 4)):
                    at = rng.randrange(len(chars) + 1)
                    op = rng.choice("ids")
                    if op == "i" or not chars[at:]:
                        chars.insert(at, rng.choice(alphabet))
                    elif op == "d":
                        del chars[at]
                    else:
                        chars[at] = rng.choice(alphabet)
                keys.append("".join(chars) or "a")
            else:
                keys.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, longest))))
        grouped = rv.group_messages(msg(k) for k in keys)
        assert sorted(sorted(m.text for m in g.messages) for g in grouped) == naive_groups(keys)


def test_group_shows_the_most_common_text_intent_and_five_variants():
    messages = [msg("押金能退吗", "ask_deposit", 0.5)] * 3 + [msg("押金能退吗?", "faq/x", 0.2)]
    messages += [msg(f"押金能退吗{'!' * n}", "ask_deposit", 0.5) for n in range(2, 9)]
    (group,) = rv.group_messages(messages)
    assert group.text == "押金能退吗" and group.intent == "ask_deposit" and group.count == 11
    assert len(group.variants) == rv.MAX_VARIANTS


def test_grouping_stays_fast_at_the_cap():
    rng = random.Random(1)
    words = ["押金", "注销", "终端", "怎么", "退", "吗", "沉睡", "激活", "违约金", "多久", "账户", "机器", "咋整"]
    messages = [msg("".join(rng.choice(words) for _ in range(rng.randint(2, 8)))) for _ in range(rv.MAX_MESSAGES)]
    start = time.perf_counter()
    groups = rv.group_messages(messages)
    assert sum(g.count for g in groups) == rv.MAX_MESSAGES
    assert time.perf_counter() - start < 10


def parse(name, confidence, ranking=(), **intent_extra):
    return {
        "parse_data": {
            "intent": {"name": name, "confidence": confidence, **intent_extra},
            "intent_ranking": [{"name": n, "confidence": c} for n, c in ranking],
        }
    }


def test_what_is_listed():
    assert rv.select(parse("ask_deposit", 0.95), 0.6) is None
    assert rv.select(parse("ask_deposit", 0.42), 0.6) == ("low", "ask_deposit", 0.42)
    assert rv.select(parse("out_of_scope", 0.99), 0.6) == ("out_of_scope", "out_of_scope", 0.99)
    fallback = parse("nlu_fallback", 0.3, [("nlu_fallback", 0.3), ("affirm", 0.21), ("check_terminal_status", 0.29)])
    assert rv.select(fallback, 0.6) == ("fallback", "check_terminal_status", 0.29)
    assert rv.select(parse("nlu_fallback", 1.0), 0.6) == ("fallback", "nlu_fallback", 1.0)
    faq = parse("faq", 0.4, full_retrieval_intent_name="faq/yiqing_erqing")
    assert rv.select(faq, 0.6) == ("low", "faq/yiqing_erqing", 0.4)
    assert rv.select({"text": "hi"}, 0.6) is None


def test_parse_time():
    now = 1_800_000_000.0
    assert rv.parse_time("7d", now) == now - 7 * 86400
    assert rv.parse_time("24h", now) == now - 86400
    assert rv.parse_time("2w", now) == now - 14 * 86400
    day = dt.datetime(2026, 5, 1)
    assert rv.parse_time("2026-05-01") == day.timestamp()
    assert rv.parse_time("2026-05-01", end_of_day=True) == (day + dt.timedelta(days=1)).timestamp()
    utc = dt.datetime(2026, 5, 1, 8, 30, tzinfo=dt.timezone.utc)
    assert rv.parse_time("2026-05-01T08:30:00+00:00") == utc.timestamp()
    with pytest.raises(ValueError):
        rv.parse_time("last week")


def test_clean_line_is_one_plain_line():
    assert rv.clean_line("押金\n能退\t吗\u2028?\x00") == "押金 能退 吗 ?"
    # Text that Rasa's reader would take for entity markup is kept literal.
    assert rv.clean_line("[押金](ask) 呢") == "［押金］(ask) 呢"


def rendered(groups):
    return rv.render(groups, ["test header", "", "second line"])


def test_written_file_loads_with_rasas_reader():
    groups = rv.group_messages(
        [
            msg("机器那个事咋整", "deregister_terminal", 0.5),
            msg("机器那个事咋整啊", "deregister_terminal", 0.4, sender="b"),
            msg("一清二清那个咋样", "faq/yiqing_erqing", 0.45),
            msg("# 不是注释: 也不是 key", "out_of_scope", 0.9, "out_of_scope"),
            msg("尾号<number>", "inform", 0.5),
        ]
    )
    text = rendered(groups)
    assert text.startswith("# test header\n#\n# second line\n")
    assert re.search(r"^- intent: deregister_terminal  # bot chose deregister_terminal at 0\.45, seen 2 times by 2 "
                     r"senders, \d{4}-\d\d-\d\d; low confidence 2$", text, re.M), text
    data = RasaYAMLReader().reads(text)
    examples = {(m.get("text"), m.get("intent")) for m in data.training_examples}
    assert examples == {
        ("机器那个事咋整", "deregister_terminal"),
        ("机器那个事咋整啊", "deregister_terminal"),
        ("一清二清那个咋样", "faq"),
        ("# 不是注释: 也不是 key", "out_of_scope"),
        ("尾号<number>", "inform"),
    }
    # After a person renames the intents.
    edited = re.sub(r"^- intent: \S+", "- intent: ask_deposit", text, flags=re.M)
    assert {m.get("intent") for m in RasaYAMLReader().reads(edited).training_examples} == {"ask_deposit"}


def test_empty_review_is_valid_nlu_data():
    assert RasaYAMLReader().reads(rendered([])).training_examples == []


def event_row(sender, ts, text, intent, confidence, ranking=()):
    data = {"event": "user", "timestamp": ts, "text": text, **parse(intent, confidence, ranking)}
    return {"sender_id": sender, "type_name": "user", "timestamp": ts, "intent_name": intent,
            "action_name": None, "data": json.dumps(data, ensure_ascii=False)}


@pytest.fixture()
def store(tmp_path):
    """A SQLite file with Rasa's events table and a few rows, for the command line."""
    url = f"sqlite:///{tmp_path / 'tracker.db'}"
    engine = sa.create_engine(url, future=True)
    meta = sa.MetaData()
    events = sa.Table(
        "events", meta,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("sender_id", sa.String(255)), sa.Column("type_name", sa.String(255)),
        sa.Column("timestamp", sa.Float), sa.Column("intent_name", sa.String(255)),
        sa.Column("action_name", sa.String(255)), sa.Column("data", sa.Text),
    )
    meta.create_all(engine)
    now = time.time()
    rows = [
        event_row("wx_secret_sender_1", now - 60, "今天天气怎么样", "out_of_scope", 0.99),
        event_row("wx_secret_sender_2", now - 50, "今天天气怎么样啊", "out_of_scope", 0.97),
        event_row("wx_secret_sender_2", now - 40, "押金能退吗", "ask_deposit", 0.99),
        event_row("wx_secret_sender_3", now - 30, "我手机13800006721", "inform", 0.45),
        event_row("wx_secret_sender_3", now - 20, "？？", "nlu_fallback", 1.0),
        event_row("wx_secret_sender_4", now - 40 * 86400, "很久以前的问题", "out_of_scope", 0.9),
    ]
    with engine.begin() as conn:
        conn.execute(events.insert(), rows)
        conn.execute(events.insert(), [{**rows[0], "type_name": "bot", "data": "{}"}])
    engine.dispose()
    return url


def test_command_line(store, tmp_path, capsys):
    out = tmp_path / "out" / "review.yml"
    assert rv.main(["--db", store, "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    printed = capsys.readouterr().out
    assert "5 user messages read, 4 listed" in printed and "2 groups written" in printed
    assert "1 left out" in printed  # the empty one
    assert "seen 2 times by 2 senders" in text
    assert "我手机<mobile>" in text and "13800006721" not in text
    assert "押金能退吗" not in text and "很久以前" not in text
    assert "wx_secret" not in text + printed
    assert rv.main(["--db", store, "--out", str(out), "--since", "60d", "--until", "20d"]) == 0
    text = out.read_text(encoding="utf-8")
    assert "很久以前的问题" in text and "天气" not in text


def test_command_line_limit_and_threshold(store, tmp_path, capsys):
    out = tmp_path / "review.yml"
    assert rv.main(["--db", store, "--out", str(out), "--below", "0.4", "--limit", "1"]) == 0
    printed = capsys.readouterr().out
    assert "3 listed" in printed and "only the 1 most recent" in printed
    assert "Only the 1 most recent" in out.read_text(encoding="utf-8")


def test_command_line_refuses_a_missing_store(tmp_path, capsys):
    assert rv.main(["--db", f"sqlite:///{tmp_path / 'none.db'}", "--out", str(tmp_path / "r.yml")]) == 1
    assert "no tracker store" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()


@pytest.mark.parametrize("args", [["--since", "yesterday"], ["--below", "2"]])
def test_command_line_rejects_bad_options(args, capsys):
    with pytest.raises(SystemExit):
        rv.main(args)


def test_patterns_do_not_overlap_placeholders():
    # Placeholders hold no digits, so a later pattern never masks an earlier placeholder.
    for placeholder in ("<email>", "<id_card>", "<mobile>", "<id>", "<terminal_id>", "<number>"):
        assert rv.mask(placeholder) == placeholder
    for a, b in itertools.permutations(["13800006721", "K7306118", "a@b.cn"], 2):
        assert not re.search(r"\d{4}|@", rv.mask(f"{a} {b}"))
