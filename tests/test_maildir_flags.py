"""
Flag changes beside an IMAP server that renames the same files: the
rename-race logic of L{popgate.stores.maildir_flags}, with the other
agent's renames and expunges injected between popgate's look and its
rename.  Whatever happens, a message is never lost, never duplicated and
never brought back once expunged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popgate.stores import maildir_flags
from popgate.stores.maildir_delivery import ensure_maildir
from popgate.stores.maildir_flags import Outcome, add_flags, split_name, with_flags

BASE = "1700000001.M1P1.host,S=5"


def names(box: Path) -> list[str]:
    return sorted(f"{sub}/{n}" for sub in ("new", "cur") for n in os.listdir(box / sub))


@pytest.fixture
def box(tmp_path: Path) -> Path:
    ensure_maildir(str(tmp_path / "box"))
    return tmp_path / "box"


def put(box: Path, relative: str, data: bytes = b"hello") -> Path:
    path = box / relative
    path.write_bytes(data)
    return path


def test_names() -> None:
    assert split_name("b") == ("b", "")
    assert split_name("b:2,FS") == ("b", "FS")
    assert split_name("b:1,xyz") == ("b", None)
    assert with_flags("b", "S") == "b:2,S"
    # Sorted, without duplicates; keywords (lower case) after system flags.
    assert with_flags("b:2,Tba", "S") == "b:2,STab"
    assert with_flags("b:2,S", "S") == "b:2,S"
    assert with_flags("b:1,x", "S") is None


def test_new_message_moves_to_cur_with_the_flag(box: Path) -> None:
    put(box, f"new/{BASE}")
    assert add_flags(str(box), "new", BASE, "S") is Outcome.CHANGED
    assert names(box) == [f"cur/{BASE}:2,S"]
    assert (box / "cur" / f"{BASE}:2,S").read_bytes() == b"hello"


def test_existing_flags_are_kept_and_sorted(box: Path) -> None:
    put(box, f"cur/{BASE}:2,RFc")
    assert add_flags(str(box), "cur", f"{BASE}:2,RFc", "S") is Outcome.CHANGED
    assert names(box) == [f"cur/{BASE}:2,FRSc"]


def test_already_flagged_is_left_alone(box: Path) -> None:
    put(box, f"cur/{BASE}:2,S")
    assert add_flags(str(box), "cur", f"{BASE}:2,S", "S") is Outcome.ALREADY
    assert names(box) == [f"cur/{BASE}:2,S"]


def test_other_info_kinds_are_left_alone(box: Path) -> None:
    put(box, f"cur/{BASE}:1,odd")
    assert add_flags(str(box), "cur", f"{BASE}:1,odd", "S") is Outcome.SKIPPED
    assert names(box) == [f"cur/{BASE}:1,odd"]


def test_renamed_by_imap_meanwhile_is_found_and_its_flags_kept(box: Path) -> None:
    """The snapshot saw new/BASE; Dovecot has since moved it to cur/ and
    flagged it \\Flagged: the S is added to that name."""
    put(box, f"cur/{BASE}:2,F")
    assert add_flags(str(box), "new", BASE, "S") is Outcome.CHANGED
    assert names(box) == [f"cur/{BASE}:2,FS"]


def test_expunged_meanwhile_stays_expunged(box: Path) -> None:
    assert add_flags(str(box), "new", BASE, "S") is Outcome.GONE
    assert names(box) == []


def test_a_target_that_exists_is_never_replaced(box: Path) -> None:
    """Another agent copying new/ -> cur/ by link and unlink, half done:
    both names exist; popgate replaces nothing and removes nothing."""
    put(box, f"new/{BASE}", b"mid-copy")
    put(box, f"cur/{BASE}:2,S", b"mid-copy")
    assert add_flags(str(box), "new", BASE, "S") is Outcome.ALREADY
    assert names(box) == [f"cur/{BASE}:2,S", f"new/{BASE}"]


def test_a_file_that_keeps_moving_is_given_up_on_boundedly(box: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    put(box, f"cur/{BASE}:2,")
    real = maildir_flags.rename_noreplace

    def imap_renames_first(source: str, target: str) -> None:
        # Dovecot toggles \Flagged just before each of popgate's renames.
        current = os.listdir(box / "cur")[0]
        flag = "" if current.endswith("F") else "F"
        os.rename(box / "cur" / current, box / "cur" / f"{BASE}:2,{flag}")
        real(source, target)

    monkeypatch.setattr(maildir_flags, "rename_noreplace", imap_renames_first)
    assert add_flags(str(box), "cur", f"{BASE}:2,", "S", attempts=5) is Outcome.RACING
    assert len(names(box)) == 1  # still there, once


@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "link-unlink"])
def test_rename_noreplace(box: Path, monkeypatch: pytest.MonkeyPatch, renameat2: bool) -> None:
    if not renameat2:
        monkeypatch.setattr(maildir_flags, "_renameat2", None)
    a, b = put(box, "cur/a"), put(box, "cur/b", b"other")
    with pytest.raises(FileExistsError):
        maildir_flags.rename_noreplace(str(a), str(b))
    assert b.read_bytes() == b"other" and a.exists()
    maildir_flags.rename_noreplace(str(a), str(box / "cur" / "c"))
    assert not a.exists() and (box / "cur" / "c").read_bytes() == b"hello"
    with pytest.raises(FileNotFoundError):
        maildir_flags.rename_noreplace(str(a), str(box / "cur" / "d"))
    assert not (box / "cur" / "d").exists()


def test_link_unlink_takes_its_link_back_when_the_source_was_expunged(
        box: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without renameat2: an expunge between popgate's link and its unlink
    must not leave the message alive under the new name."""
    monkeypatch.setattr(maildir_flags, "_renameat2", None)
    source = put(box, f"new/{BASE}")
    real_link = os.link

    def link_then_expunge(src: Any, dst: Any) -> None:
        real_link(src, dst)
        os.unlink(source)  # Dovecot expunges the old name right then

    monkeypatch.setattr(os, "link", link_then_expunge)
    with pytest.raises(FileNotFoundError):
        maildir_flags.rename_noreplace(str(source), str(box / "cur" / f"{BASE}:2,S"))
    assert names(box) == []


# -- any interleaving

_AGENT = st.lists(st.sampled_from(["flag", "unflag", "to-cur", "expunge", "nothing"]),
                  min_size=0, max_size=12)


@settings(max_examples=150, deadline=None)
@given(start=st.sampled_from(["new/" + BASE, "cur/" + BASE + ":2,", "cur/" + BASE + ":2,T"]),
       moves=_AGENT, use_renameat2=st.booleans())
def test_never_lost_duplicated_or_resurrected(tmp_path_factory: pytest.TempPathFactory,
                                              start: str, moves: list[str],
                                              use_renameat2: bool) -> None:
    box = tmp_path_factory.mktemp("race")
    ensure_maildir(str(box))
    put(box, start)
    agent = iter(moves)
    expunged = False
    real = maildir_flags.rename_noreplace
    saved = maildir_flags._renameat2

    def other_agent_then_rename(source: str, target: str) -> None:
        nonlocal expunged
        move = next(agent, "nothing")
        found = maildir_flags.find_current(str(box), BASE)
        if found is not None and move != "nothing":
            path = box / found[0] / found[1]
            flags = maildir_flags.flags_of(found[1])
            if move == "expunge":
                path.unlink()
                expunged = True
            elif move == "to-cur":
                path.rename(box / "cur" / f"{BASE}:2,{flags}")
            elif move == "flag":
                path.rename(box / "cur" / f"{BASE}:2,{''.join(sorted(set(flags + 'F')))}")
            else:
                path.rename(box / found[0] / f"{BASE}:2,{flags.replace('F', '')}")
        real(source, target)

    maildir_flags.rename_noreplace = other_agent_then_rename
    if not use_renameat2:
        maildir_flags._renameat2 = None
    try:
        subdir, name = start.split("/")
        outcome = add_flags(str(box), subdir, name, "S", attempts=4)
    finally:
        maildir_flags.rename_noreplace = real
        maildir_flags._renameat2 = saved
    left = names(box)
    if expunged:
        # The agent expunges only before one of popgate's renames, which
        # then finds nothing: no name is made for it.
        assert outcome is Outcome.GONE and left == []
    else:
        assert len(left) == 1, left
        assert (box / left[0]).read_bytes() == b"hello"
        if outcome is Outcome.CHANGED:
            assert left[0].startswith("cur/") and "S" in maildir_flags.flags_of(left[0])


def test_many_moved_messages_cost_one_listing(box: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dovecot's SELECT moved every file of the snapshot to cur/: marking
    them all lists the Maildir once, not once per message."""
    for i in range(50):
        put(box, f"cur/{i}.M1P1.h:2,")
    listings: list[str] = []
    real = os.listdir

    def counting(path: Any) -> list[str]:
        listings.append(str(path))
        return real(path)

    monkeypatch.setattr(os, "listdir", counting)
    locator = maildir_flags.Locator(str(box))
    outcomes = {add_flags(str(box), "new", f"{i}.M1P1.h", "S", locator=locator)
                for i in range(50)}
    assert outcomes == {Outcome.CHANGED}
    assert len(listings) == 2  # new/ and cur/, once
    monkeypatch.setattr(os, "listdir", real)
    assert len(names(box)) == 50 and all(n.endswith(":2,S") for n in names(box))
