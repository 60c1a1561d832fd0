"""The listing parameters: search, sort, start, limit, only, and the meta they produce."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest

from controller.errors import BadRequest
from controller.listing import Query, apply, page_info, parse_query, parse_search, project

DOCS: list[dict[str, Any]] = [
    {
        "id": "a1",
        "name": "web 1",
        "state": "running",
        "cloud": "aws",
        "tags": {"env": "prod", "team": "core"},
        "ips": ["10.0.0.1", "192.168.1.5"],
        "cores": 4,
        "public": True,
        "networks": [{"name": "lan"}, {"name": "dmz"}],
    },
    {
        "id": "b2",
        "name": "Web-2",
        "state": "stopped",
        "cloud": "gce",
        "tags": {"env": "dev"},
        "ips": [],
        "cores": 2,
        "public": False,
        "owner": None,
    },
    {"id": "c3", "name": "db:main (primary)", "state": "running", "cloud": "aws", "cores": 16},
    {"id": "d4", "name": "cache", "state": "error", "cloud": "azure", "tags": {}, "cores": "8"},
]


def ids(query: str, docs: list[dict[str, Any]] = DOCS) -> list[str]:
    search = parse_search(query)
    return [d["id"] for d in docs if search.matches(d)]


def bad(field: str, params: dict[str, str]) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        parse_query(params)
    assert info.value.details["field"] == field
    assert info.value.status == 400
    return info.value


# --- search: terms and operators -----------------------------------------------------------


def test_key_value_equality_ignores_case() -> None:
    assert ids("state:running") == ["a1", "c3"]
    assert ids("STATE:RUNNING") == []  # keys are exact paths; only values ignore case
    assert ids("cloud:AWS") == ["a1", "c3"]


def test_equals_sign_is_the_same_as_colon() -> None:
    assert ids("state=stopped") == ids("state:stopped") == ["b2"]


def test_not_equal_includes_missing_fields() -> None:
    assert ids("state!=running") == ["b2", "d4"]
    assert ids("tags!=env") == ["c3", "d4"]


def test_adjacent_terms_are_anded() -> None:
    assert ids("cloud:aws state:running") == ["a1", "c3"]
    assert ids("cloud:aws cores:4") == ["a1"]
    assert ids("cloud:aws AND cores:16") == ["c3"]


def test_or_and_precedence() -> None:
    # AND binds tighter: state:error OR (cloud:aws AND cores:4)
    assert ids("state:error OR cloud:aws cores:4") == ["a1", "d4"]
    assert ids("state:error OR cloud:aws AND cores:4") == ["a1", "d4"]
    assert ids("cloud:aws cores:4 OR state:error") == ["a1", "d4"]


def test_parentheses_group() -> None:
    assert ids("(state:error OR cloud:aws) cores:4") == ["a1"]
    assert ids("(state:error OR cloud:aws) AND (cores:16 OR cores:8)") == ["c3", "d4"]
    assert ids("((cloud:gce))") == ["b2"]


def test_lowercase_and_or_are_free_text() -> None:
    docs = [{"id": "x", "name": "rock and roll"}, {"id": "y", "name": "rock"}]
    assert ids("rock and", docs) == ["x"]
    assert ids("rock OR nothing", docs) == ["x", "y"]


def test_numbers_and_booleans_compare_as_text() -> None:
    assert ids("cores:8") == ["d4"]  # the string "8"
    assert ids("cores:16") == ["c3"]
    assert ids("public:true") == ["a1"]
    assert ids("public:FALSE") == ["b2"]


def test_none_equals_only_the_empty_value() -> None:
    assert ids("owner:none") == []
    assert ids("owner:null") == []
    assert "b2" in ids("owner:")


def test_empty_value_matches_missing_null_and_empty() -> None:
    assert ids("owner:") == ["a1", "b2", "c3", "d4"]  # missing on a1, c3, d4; None on b2
    assert ids("ips:") == ["b2", "c3", "d4"]  # [] on b2, missing elsewhere
    assert ids("tags:") == ["c3", "d4"]  # missing, {}
    assert ids("ips!=") == ["a1"]


def test_list_fields_match_any_element() -> None:
    assert ids("ips:192.168.1.5") == ["a1"]
    assert ids("ips:10.0.0") == []  # equality, not substring


def test_dict_field_means_key_exists() -> None:
    assert ids("tags:env") == ["a1", "b2"]
    assert ids("tags:team") == ["a1"]
    assert ids("tags:prod") == []


def test_dotted_paths() -> None:
    assert ids("tags.env:prod") == ["a1"]
    assert ids("tags.env:DEV") == ["b2"]
    assert ids("tags.env:") == ["c3", "d4"]
    assert ids("networks.name:dmz") == ["a1"]  # through a list of dicts
    assert ids("name.first:x") == []  # a path through a string resolves to nothing


def test_free_text_is_substring_of_name_or_id() -> None:
    assert ids("web") == ["a1", "b2"]
    assert ids("WEB-") == ["b2"]
    assert ids("c3") == ["c3"]
    assert ids("running") == []  # state is not a text field


def test_free_text_fields_can_be_chosen() -> None:
    search = parse_search("running")
    assert search.matches(DOCS[0], ["state"])
    assert not search.matches(DOCS[1], ["state"])
    data, _ = apply(DOCS, parse_query({"search": "aws"}), text_fields=["cloud"])
    assert [d["id"] for d in data] == ["a1", "c3"]


def test_quoted_values_and_free_text() -> None:
    assert ids('name:"web 1"') == ["a1"]
    assert ids('name:"WEB 1"') == ["a1"]
    assert ids('"db:main (primary)"') == ["c3"]
    assert ids('"web 1"') == ["a1"]
    assert ids('name:"db:main (primary)"') == ["c3"]


def test_a_quoted_term_is_free_text() -> None:
    docs = [{"id": "1", "name": "state:running"}, {"id": "2", "state": "running"}]
    assert ids('"state:running"', docs) == ["1"]
    assert ids('"AND"', [{"id": "1", "name": "AND"}, {"id": "2", "name": "x"}]) == ["1"]


def test_backslash_escapes_a_quote_inside_quotes() -> None:
    docs = [{"id": "1", "name": 'say "hi"'}, {"id": "2", "name": "path\\dir"}]
    assert ids(r'"say \"hi\""', docs) == ["1"]
    assert ids(r'name:"path\\dir"', docs) == ["2"]
    assert ids(r'"path\dir"', docs) == ["2"]  # other backslashes stay as written


def test_value_may_contain_colons() -> None:
    docs = [{"id": "1", "url": "http://x"}, {"id": "2", "url": "http"}]
    assert ids("url:http://x", docs) == ["1"]


def test_blank_search_matches_everything() -> None:
    assert ids("   ") == ["a1", "b2", "c3", "d4"]
    assert parse_query({"search": "  "}).search is None


# --- search: equalities --------------------------------------------------------------------


def test_equalities_top_level_and() -> None:
    search = parse_search('cloud:AWS state=running web tags.env:"prod x" owner: id!=x')
    assert search.equalities() == {"cloud": "AWS", "state": "running", "tags.env": "prod x"}
    assert parse_search("cloud:aws").equalities() == {"cloud": "aws"}
    assert parse_search("(cloud:aws state:on) cores:4").equalities() == {
        "cloud": "aws",
        "state": "on",
        "cores": "4",
    }
    assert parse_search("cloud:aws (state:on OR state:off)").equalities() == {"cloud": "aws"}


def test_equalities_empty_with_top_level_or() -> None:
    assert parse_search("cloud:aws OR cloud:gce").equalities() == {}
    assert parse_search("cloud:aws state:on OR cores:4").equalities() == {}
    assert parse_search("web").equalities() == {}


# --- search: errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('name:"web', ["unbalanced quote", "position 6"]),
        ('"abc', ["unbalanced quote", "position 1"]),
        (r'"abc\"', ["unbalanced quote"]),
        ("(a OR b", ["unbalanced parenthesis", "position 1", "not closed"]),
        ("a OR b)", ["unbalanced parenthesis", "position 7", "closes nothing"]),
        (") a", ["unbalanced parenthesis", "position 1"]),
        ("((a)", ["unbalanced parenthesis", "position 1"]),
        ("()", ["empty parentheses"]),
        ("(", ["unbalanced parenthesis"]),
        ("a AND", ["dangling AND", "position 3"]),
        ("OR a", ["dangling OR", "position 1"]),
        ("a OR OR b", ["dangling OR", "position 3"]),
        ("a AND OR b", ["dangling AND"]),
        ("(a OR) b", ["dangling OR"]),
        ("a (AND b)", ["dangling AND"]),
        (":value", ["empty key", "position 1"]),
        ("a =x", ["empty key", "position 3"]),
        ("!=x", ["empty key"]),
        ("na$me:x", ["invalid key 'na$me'"]),
        ("(" * 40 + "a" + ")" * 40, ["nested too deeply"]),
    ],
)
def test_search_errors(text: str, words: list[str]) -> None:
    err = bad("search", {"search": text})
    for word in words:
        assert word in err.message
    with pytest.raises(BadRequest):
        parse_search(text)


def test_search_length_limit() -> None:
    assert ids("x" * 2000) == []
    err = bad("search", {"search": "x" * 2001})
    assert "2000" in err.message


def test_error_message_names_search_and_position() -> None:
    err = bad("search", {"search": 'name:"web'})
    assert err.message == "unbalanced quote in search at position 6"
    assert err.to_dict()["details"] == {"field": "search"}


# --- sort, start, limit, only: parsing -----------------------------------------------------


def test_defaults() -> None:
    q = parse_query({})
    assert q == Query(search=None, sort=(), start=0, limit=100, only=None)
    assert parse_query({"sort": "", "start": "", "limit": "", "only": ""}) == q
    assert parse_query({}, default_limit=20).limit == 20
    assert parse_query({"other": "ignored"}) == q


def test_sort_parsing() -> None:
    assert parse_query({"sort": "-name,created"}).sort == (("name", True), ("created", False))
    assert parse_query({"sort": " tags.env , -cores "}).sort == (
        ("tags.env", False),
        ("cores", True),
    )


@pytest.mark.parametrize("sort", ["na me", "name,,id", "name,", "-", "$x", "name;drop"])
def test_sort_errors(sort: str) -> None:
    bad("sort", {"sort": sort})


def test_start_parsing() -> None:
    assert parse_query({"start": "25"}).start == 25
    assert parse_query({"start": "0"}).start == 0
    assert parse_query({"start": "a1"}).start == "a1"
    assert parse_query({"start": "5f3e-x"}).start == "5f3e-x"


@pytest.mark.parametrize("start", ["-1", "-20", "9" * 30, "x" * 300])
def test_start_errors(start: str) -> None:
    bad("start", {"start": start})


def test_limit_parsing() -> None:
    assert parse_query({"limit": "1"}).limit == 1
    assert parse_query({"limit": "1000"}).limit == 1000
    assert parse_query({"limit": "50"}, max_limit=50).limit == 50


@pytest.mark.parametrize("limit", ["0", "-5", "abc", "2.5", "1e3", "1001", "9" * 50])
def test_limit_errors(limit: str) -> None:
    bad("limit", {"limit": limit})


def test_limit_over_maximum_names_the_maximum() -> None:
    err = bad("limit", {"limit": "1001"})
    assert "1000" in err.message
    with pytest.raises(BadRequest) as info:
        parse_query({"limit": "51"}, max_limit=50)
    assert "50" in info.value.message and info.value.details["field"] == "limit"


def test_only_parsing() -> None:
    assert parse_query({"only": "name, tags.env,name"}).only == ("name", "tags.env")


@pytest.mark.parametrize("only", ["name,,id", "na me", "a$b", "name,"])
def test_only_errors(only: str) -> None:
    bad("only", {"only": only})


# --- apply: sorting ------------------------------------------------------------------------


def run(**params: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    return apply(DOCS, parse_query(params))


def test_sort_text_ignores_case() -> None:
    data, meta = run(sort="name")
    assert [d["id"] for d in data] == ["d4", "c3", "a1", "b2"]  # cache, db, web 1, Web-2
    assert meta["sort"] == "name"
    data, meta = run(sort="-name")
    assert [d["id"] for d in data] == ["b2", "a1", "c3", "d4"]
    assert meta["sort"] == "-name"


def test_sort_missing_values_last_ascending_first_descending() -> None:
    data, _ = run(sort="tags.env")
    assert [d["id"] for d in data] == ["b2", "a1", "c3", "d4"]  # dev, prod, missing, missing
    data, _ = run(sort="-tags.env")
    assert [d["id"] for d in data] == ["c3", "d4", "a1", "b2"]


def test_sort_mixed_types_does_not_raise() -> None:
    docs: list[dict[str, Any]] = [
        {"id": "s", "v": "text"},
        {"id": "n", "v": None},
        {"id": "i", "v": 10},
        {"id": "f", "v": 2.5},
        {"id": "b", "v": True},
        {"id": "l", "v": [1]},
        {"id": "m"},
        {"id": "d", "v": {"a": 1}},
    ]
    data, _ = apply(docs, parse_query({"sort": "v"}))
    order = [d["id"] for d in data]
    assert order[:4] == ["b", "f", "i", "s"]  # booleans, numbers, text
    assert set(order[4:6]) == {"l", "d"}  # anything else
    assert order[6:] == ["n", "m"]  # null and missing, stable
    data, _ = run(sort="cores")  # 2, 4, 16 then the string "8"
    assert [d["id"] for d in data] == ["b2", "a1", "c3", "d4"]


def test_sort_is_stable_and_multi_key() -> None:
    data, meta = run(sort="cloud,-cores")
    assert [d["id"] for d in data] == ["c3", "a1", "d4", "b2"]
    assert meta["sort"] == "cloud,-cores"
    data, _ = run(sort="-state")  # stopped, running (a1, c3 keep order), error
    assert [d["id"] for d in data] == ["b2", "a1", "c3", "d4"]
    data, _ = run(sort="state")
    assert [d["id"] for d in data] == ["d4", "a1", "c3", "b2"]


def test_sort_string_is_normalised() -> None:
    _, meta = run(sort=" -name , cores")
    assert meta["sort"] == "-name,cores"
    _, meta = run()
    assert meta["sort"] == ""


# --- apply: paging and meta ----------------------------------------------------------------


def test_meta_totals_and_offset_paging() -> None:
    data, meta = run(limit="2")
    assert [d["id"] for d in data] == ["a1", "b2"]
    assert meta == {"total": 4, "returned": 2, "sort": "", "start": 0}
    data, meta = run(limit="2", start="2")
    assert [d["id"] for d in data] == ["c3", "d4"]
    assert meta == {"total": 4, "returned": 2, "sort": "", "start": 2}
    data, meta = run(start="3", limit="10")
    assert [d["id"] for d in data] == ["d4"]
    assert meta["returned"] == 1


def test_start_past_the_end_is_empty() -> None:
    data, meta = run(start="10")
    assert data == []
    assert meta == {"total": 4, "returned": 0, "sort": "", "start": 10}


def test_total_counts_matches_before_paging() -> None:
    data, meta = run(search="cloud:aws OR cloud:gce", limit="1", start="1")
    assert [d["id"] for d in data] == ["b2"]
    assert meta == {"total": 3, "returned": 1, "sort": "", "start": 1}


def test_start_by_id_after_search_and_sort() -> None:
    data, meta = run(sort="-cores", start="a1", limit="2")  # d4 "8" (text), c3 16, a1 4, b2 2
    assert [d["id"] for d in data] == ["a1", "b2"]
    assert meta == {"total": 4, "returned": 2, "sort": "-cores", "start": 2}
    data, meta = run(search="cloud:aws OR cloud:gce", sort="cores", start="a1")  # b2, a1, c3
    assert [d["id"] for d in data] == ["a1", "c3"]
    assert meta == {"total": 3, "returned": 2, "sort": "cores", "start": 1}


def test_start_by_unknown_id() -> None:
    with pytest.raises(BadRequest) as info:
        run(start="zz")
    assert info.value.details["field"] == "start"
    with pytest.raises(BadRequest) as info:  # exists, but filtered out by the search
        run(start="b2", search="cloud:aws")
    assert info.value.details["field"] == "start"


# --- projection ----------------------------------------------------------------------------


def test_only_projection_in_apply() -> None:
    data, _ = run(only="name", limit="2")
    assert data == [{"id": "a1", "name": "web 1"}, {"id": "b2", "name": "Web-2"}]


def test_project_dotted_and_missing_fields() -> None:
    doc = DOCS[0]
    assert project(doc, ("tags.env", "cores", "nope")) == {
        "id": "a1",
        "tags": {"env": "prod"},
        "cores": 4,
    }
    assert project(doc, ("tags.env", "tags.team")) == {
        "id": "a1",
        "tags": {"env": "prod", "team": "core"},
    }
    assert project({"name": "x"}, ("name",)) == {"name": "x"}  # no id to keep


def test_project_enclosing_field_wins_and_source_is_untouched() -> None:
    doc = {"id": "1", "tags": {"env": "prod", "team": "core"}}
    assert project(doc, ("tags.env", "tags")) == {"id": "1", "tags": doc["tags"]}
    assert project(doc, ("tags", "tags.env")) == {"id": "1", "tags": doc["tags"]}
    assert doc == {"id": "1", "tags": {"env": "prod", "team": "core"}}
    frozen = {"id": "2", "tags": MappingProxyType({"env": "prod"})}  # read-only nested mapping
    assert project(frozen, ("tags", "tags.env")) == {"id": "2", "tags": frozen["tags"]}


def test_project_none_copies_everything() -> None:
    copy = project(DOCS[0], None)
    assert copy == DOCS[0]
    assert copy is not DOCS[0]


# --- page_info: the store's fast path ------------------------------------------------------


def test_page_info_has_the_same_shape_as_apply() -> None:
    query = parse_query({"start": "2", "limit": "2"})
    _, meta = apply(DOCS, query)
    assert page_info(4, 2, query) == meta


def test_page_info_needs_the_offset_for_an_id_start() -> None:
    query = parse_query({"start": "c3"})
    with pytest.raises(ValueError):
        page_info(4, 2, query)
    assert page_info(4, 2, query, start=2) == {"total": 4, "returned": 2, "sort": "", "start": 2}
