import pytest

from horizon.errors import HorizonError
from horizon.groups import ImageGrid, tile


def test_reference_convention_24x24_k2():
    start = 35
    groups = tile([ImageGrid(start, 24, 24)], 2)
    assert len(groups) == 144
    for g in groups:
        r, c = divmod(g.index, 12)
        expected = {start + (2 * r + i) * 24 + 2 * c + j for i in range(2) for j in range(2)}
        assert set(g.positions) == expected
        assert (g.row, g.col) == (2 * r, 2 * c)


def test_ragged_edges_cover_every_token_once():
    groups = tile([ImageGrid(10, 5, 7)], 2)
    sizes = [len(g.positions) for g in groups]
    assert len(groups) == 3 * 4
    assert sizes.count(4) == 2 * 3 and sizes.count(2) == 2 + 3 and sizes.count(1) == 1
    covered = sorted(p for g in groups for p in g.positions)
    assert covered == list(range(10, 10 + 35))
    assert groups[-1].positions == (10 + 4 * 7 + 6,)


def test_k1_is_single_tokens_and_images_are_numbered_on():
    groups = tile([ImageGrid(3, 2, 2), ImageGrid(20, 1, 3)], 1)
    assert [g.positions for g in groups] == [(3,), (4,), (5,), (6,), (20,), (21,), (22,)]
    assert [g.index for g in groups] == list(range(7))
    assert [g.image for g in groups] == [0] * 4 + [1] * 3


def test_bad_window_size():
    with pytest.raises(HorizonError, match="positive"):
        tile([ImageGrid(0, 2, 2)], 0)


def test_batch_plan_keeps_layers_apart_and_bounds_recompute():
    from horizon.ablation import Ablation, plan_batches

    ablations = [Ablation(l, (p, p + 1)) for l in (1, 0) for p in range(10, 90, 2)]
    seq = 100
    for min_gap in (0, 32):
        batches = plan_batches(ablations, batch_size=8, seq_len=seq, max_waste=0.1, min_gap=min_gap)
        assert sorted(i for b in batches for i in b) == list(range(len(ablations)))
        for batch in batches:
            rows = [ablations[i] for i in batch]
            assert len({r.layer for r in rows}) == 1 and len(rows) <= 8
            firsts = [r.removed[0] for r in rows]
            assert firsts == sorted(firsts)
            assert max(firsts) - min(firsts) <= max(0.1 * (seq - min(firsts)), min_gap)
    # on this short sequence the small-gap allowance fills batches that the 10% bound alone splits
    assert len(plan_batches(ablations, 8, seq, min_gap=32)) == 10 < len(plan_batches(ablations, 8, seq, min_gap=0))
    # without a sequence length only the size and layer bounds apply
    assert [len(b) for b in plan_batches(ablations, batch_size=16)] == [16, 16, 8, 16, 16, 8]


def test_rows_with_a_separator_token_leave_it_out_of_every_window():
    """A row stride of width + 1 (a newline / [IMG_BREAK] token after each row): windows skip the separators."""
    from horizon.groups import ImageGrid, tile

    grid = ImageGrid(start=10, height=3, width=4, row_stride=5)
    separators = {10 + 5 * r + 4 for r in range(3)}
    groups = tile([grid], 2)
    covered = [p for g in groups for p in g.positions]
    assert sorted(covered) == sorted(set(range(10, 10 + 15)) - separators)
    assert groups[0].positions == (10, 11, 15, 16) and groups[-1].positions == (22, 23)
    assert grid.position(2, 3) == 23


def test_several_grids_of_one_image_keep_their_windows_apart():
    # one image as two 3 x 3 tiles and a 2 x 2 thumbnail, a second image with one grid
    grids = [ImageGrid(0, 3, 3, image=0, level="tiles"), ImageGrid(9, 3, 3, image=0, level="tiles"),
             ImageGrid(20, 2, 2, image=0, level="thumbnail"), ImageGrid(30, 1, 2, image=1)]
    groups = tile(grids, 2)
    assert [g.grid for g in groups] == [0] * 4 + [1] * 4 + [2] + [3]
    assert [g.image for g in groups] == [0] * 9 + [1]
    for g in groups:  # a window's positions all lie on its own grid
        grid = grids[g.grid]
        assert all(grid.start <= p < grid.start + grid.size for p in g.positions)
    assert groups[3].positions == (8,) and groups[4].positions == (9, 10, 12, 13)  # tile edge: ragged, then a fresh tile


def test_grid_views_map_regions_into_the_family_view():
    from horizon.models.adapter import Adapter

    class Cropping(Adapter):  # a family whose processor shows the model x 10..90 of a 100 x 50 image
        def view(self, processor, size, grid):
            return (10.0, 0.0, 90.0, 50.0)

    grids = [ImageGrid(0, 2, 2, region=(0.0, 0.0, 0.5, 1.0)), ImageGrid(4, 2, 2, region=(0.5, 0.0, 1.0, 1.0)),
             ImageGrid(8, 2, 2)]
    assert Cropping().grid_views(None, (100, 50), grids) == [(10.0, 0.0, 50.0, 50.0), (50.0, 0.0, 90.0, 50.0),
                                                             (10.0, 0.0, 90.0, 50.0)]


def test_batch_plan_groups_removals_by_where_they_start_changing_things():
    from horizon.ablation import Ablation, plan_batches

    # removals spread over a 200-token bidirectional block starting at 100: each changes everything from 100 on
    ablations = [Ablation(0, (p,)) for p in range(100, 300, 10)]
    block_start = (lambda p: 100 if 100 <= p < 300 else p)
    assert len(plan_batches(ablations, 64, 400, min_gap=0)) > 1
    assert len(plan_batches(ablations, 64, 400, min_gap=0, reuse_start=block_start)) == 1
