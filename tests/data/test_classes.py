"""Class lists from --classes and --classes-file, and file names made from class names."""

from __future__ import annotations

import unicodedata

import pytest

from zutiscli.data.classes import ClassQuery, parse_classes, read_classes_file, safe_filename, safe_filenames
from zutiscli.errors import UsageError, ZutisError


def names(queries):
    return [q.name for q in queries]


def test_comma_list_is_stripped_and_its_own_phrase():
    assert parse_classes(" cat , dog,traffic light ", None) == [
        ClassQuery("cat", "cat"), ClassQuery("dog", "dog"), ClassQuery("traffic light", "traffic light")
    ]


def test_empty_items_are_forgiven_but_not_an_empty_list():
    assert names(parse_classes("cat,,dog,", None)) == ["cat", "dog"]
    for bad in ("", " ", ",", " , ,, "):
        with pytest.raises(UsageError, match="names no class"):
            parse_classes(bad, None)


def test_exactly_one_source_is_required(tmp_path):
    with pytest.raises(UsageError, match="no classes given"):
        parse_classes(None, None)
    file = tmp_path / "classes.txt"
    file.write_text("cat\n")
    with pytest.raises(UsageError, match="exclude each other"):
        parse_classes("cat", file)


def test_duplicates_are_named():
    with pytest.raises(UsageError, match=r"duplicate class name 'dog' \(item 2 and item 4 of --classes\)"):
        parse_classes("cat,dog,bird,dog", None)


def test_unicode_names_are_valid_and_nfc_normalised():
    decomposed = unicodedata.normalize("NFD", "café")
    assert decomposed != "café"
    assert names(parse_classes(f"{decomposed},猫", None)) == ["café", "猫"]
    with pytest.raises(UsageError, match="duplicate class name 'café'"):
        parse_classes(f"café,{decomposed}", None)


@pytest.mark.parametrize("bad", ["ca\tt", "ca\nt", "ca\x00t", "ca\x1bt", "ca\u2028t"])
def test_control_characters_are_refused(bad):
    with pytest.raises(UsageError, match="control character"):
        parse_classes(f"dog,{bad}", None)


def test_persian_zero_width_non_joiner_is_a_valid_name_character():
    assert names(parse_classes("می\u200cخواهم", None)) == ["می\u200cخواهم"]


def test_file_with_phrases_comments_blank_lines_bom_and_crlf(tmp_path):
    file = tmp_path / "classes.txt"
    file.write_bytes("\ufeff# Cityscapes, ReCo style\r\n\r\nroad\r\nparking\tparking lot\r\n  # indented comment\n猫\t\nC#\n".encode("utf-8"))
    assert parse_classes(None, file) == [
        ClassQuery("road", "road"),
        ClassQuery("parking", "parking lot"),
        ClassQuery("猫", "猫"),
        ClassQuery("C#", "C#"),
    ]


def test_file_errors_name_the_file_and_line(tmp_path):
    file = tmp_path / "classes.txt"
    file.write_text("cat\ndog\n\ncat\n")
    with pytest.raises(ZutisError, match=r"duplicate class name 'cat' \(line 1 and line 4 of .*classes.txt\)"):
        read_classes_file(file)
    file.write_text("cat\n\tphrase only\n")
    with pytest.raises(ZutisError, match=r"classes.txt: line 2 has a search phrase but no class name"):
        read_classes_file(file)
    file.write_text("cat\na\tb\tc\n")
    with pytest.raises(ZutisError, match=r"classes.txt: line 2 has 2 tabs"):
        read_classes_file(file)
    file.write_text("cat\nbad\x0bname\n")
    with pytest.raises(ZutisError, match=r"classes.txt: line 2: the class name .* control character '\\x0b'"):
        read_classes_file(file)
    file.write_text("# nothing here\n\n   \n")
    with pytest.raises(ZutisError, match=r"classes.txt: the classes file names no class"):
        read_classes_file(file)
    file.write_bytes(b"cat\ncaf\xe9\n")
    with pytest.raises(ZutisError, match=r"classes.txt: line 2 is not UTF-8"):
        read_classes_file(file)
    with pytest.raises(ZutisError, match=r"missing.txt: no such classes file"):
        parse_classes(None, tmp_path / "missing.txt")
    with pytest.raises(ZutisError, match="is a directory"):
        parse_classes(None, tmp_path)


def test_errors_are_one_line(tmp_path):
    file = tmp_path / "classes.txt"
    file.write_text("a\na\n")
    with pytest.raises(ZutisError) as info:
        read_classes_file(file)
    assert "\n" not in str(info.value)


def test_safe_filename_keeps_safe_names_and_marks_changed_ones():
    assert safe_filename("cat") == "cat"
    assert safe_filename("traffic light") == "traffic light"
    assert safe_filename("猫") == "猫"
    for name in ("AC/DC", "a\\b", "..", ".hidden", "what?", "trailing.", "con", "x" * 400, "a\tb"):
        stem = safe_filename(name)
        assert "/" not in stem and "\\" not in stem and not stem.startswith(".")
        assert stem != name and len(stem.encode("utf-8")) <= 130
        assert stem == safe_filename(name)  # deterministic
    assert safe_filename("AC/DC").startswith("AC_DC-")
    assert safe_filename("a/b") != safe_filename("a_b") != safe_filename("a:b")


def test_safe_filenames_are_unique_ignoring_case_and_order():
    listed = ["Cat", "cat", "dog", "a/b", "a_b", "a:b"]
    stems = safe_filenames(listed)
    assert len({s.casefold() for s in stems}) == len(listed)
    assert stems[2] == "dog"
    assert dict(zip(listed, stems)) == dict(zip(reversed(listed), safe_filenames(list(reversed(listed)))))


def test_safe_filenames_number_repeated_names():
    assert safe_filenames(["img", "img", "x", "img"]) == ["img", "img-2", "x", "img-3"]


def test_stuff_names_are_added_after_the_classes_once():
    from zutiscli.data.classes import with_stuff

    queries = [ClassQuery("star", "a star"), ClassQuery("Sky", "Sky")]
    got = with_stuff(queries, [" sky", "grass", "grass ", ""])
    assert got == [*queries, ClassQuery("grass", "grass")]  # "sky" is already a class; the phrase given stays
