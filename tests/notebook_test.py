"""notebooks/tour.ipynb: committed without outputs, and it runs from start to end."""

import json
import pathlib

import pytest
from conftest import ROOT

TOUR = ROOT / 'notebooks' / 'tour.ipynb'


def test_the_tour_is_committed_without_outputs():
    cells = json.loads(TOUR.read_text(encoding='utf-8'))['cells']
    code = [c for c in cells if c['cell_type'] == 'code']
    assert len(code) >= 8
    dirty = [i for i, c in enumerate(code) if c.get('outputs') or c.get('execution_count')]
    assert not dirty, f'code cells {dirty} have outputs: clear them before committing'


@pytest.mark.xdist_group('notebook')
def test_the_tour_runs_from_the_notebooks_folder(tmp_path, monkeypatch):
    """Executed headlessly as Jupyter would, in notebooks/ (charlm not installed)."""
    nbclient = pytest.importorskip('nbclient')
    import nbformat

    monkeypatch.setenv('TMPDIR', str(tmp_path))  # the tour's workdir goes in the test's tmp
    # One device, as on a user's machine (the suite's other tests fake 4).
    monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=1')
    nb = nbformat.read(TOUR, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name='python3',
                                     resources={'metadata': {'path': str(TOUR.parent)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs]
    assert not [o for o in outputs if o.output_type == 'error']
    text = ''.join(o.get('text', '') for o in outputs if o.output_type == 'stream')
    assert 'best val loss' in text and 'nats/char' in text and 'ROMEO:' in text
    assert 'lr 0.001' in text and 'hardest characters' in text
    images = [o for o in outputs if 'image/png' in o.get('data', {})]
    assert len(images) >= 4  # curves, gates, comparison, token losses
    assert list(pathlib.Path(tmp_path).glob('charlm-tour-*/compare/compare.md'))
