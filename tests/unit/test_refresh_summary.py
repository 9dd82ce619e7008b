"""What a refresh reports per style: images added, changed in place and removed, by content."""

from rdm.refresh import compare

BEFORE = {"s/a.png": "1", "s/b.png": "2", "s/c.png": "3"}


def test_added_changed_and_removed_files_are_counted_once_each() -> None:
    after = {"s/a.png": "1", "s/b.png": "9", "s/d.png": "4"}  # b rewritten, c deleted, d new
    assert compare(BEFORE, after) == {"added": 1, "changed": 1, "removed": 1}


def test_a_moved_source_with_the_same_images_changes_nothing() -> None:
    moved = {f"elsewhere/{location}": image for location, image in BEFORE.items()}
    assert compare(BEFORE, moved) == {"added": 0, "changed": 0, "removed": 0}
    moved["elsewhere/s/e.png"] = "5"
    del moved["elsewhere/s/c.png"]
    assert compare(BEFORE, moved) == {"added": 1, "changed": 0, "removed": 1}


def test_a_first_refresh_adds_everything() -> None:
    assert compare({}, BEFORE) == {"added": 3, "changed": 0, "removed": 0}
