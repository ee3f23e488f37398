"""`book.py profile` attributes a chapter's time to training, evaluation, sampling and plotting."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import chapter_profile  # noqa: E402

CHAPTER = '''# %%
import time, torch, matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from aigc_book.models.gpt import GPT
from aigc_book.models.transformer import TransformerConfig
torch.manual_seed(0)
model = GPT(TransformerConfig(vocab_size=16, block_size=16, n_layer=1, n_head=2, n_embd=16))
opt = torch.optim.AdamW(model.parameters())

# %%
for _ in range(3):
    loss = model(torch.zeros(2, 8, dtype=torch.long)).logits.sum()
    loss.backward()
    opt.step()

# %%
with torch.no_grad():
    model(torch.zeros(2, 8, dtype=torch.long))
model.generate(torch.zeros(1, 2, dtype=torch.long), 4, temperature=0)

# %%
fig, ax = plt.subplots()
ax.plot([1, 2])
fig.savefig(__import__("io").BytesIO())
time.sleep(0.2)
'''


def test_profile_splits_a_chapter_into_its_activities(tmp_path):
    py = tmp_path / "99_tiny.py"
    py.write_text(CHAPTER)
    profile = chapter_profile.profile_chapter(py)
    train, infer, plot = profile["cells"][1], profile["cells"][2], profile["cells"][3]
    assert len(profile["cells"]) == 4
    assert train["training"] > 0 and train["evaluation"] == 0 and train["sampling"] == 0
    assert infer["evaluation"] > 0 and infer["sampling"] > 0 and infer["training"] == 0
    assert plot["plotting"] > 0 and plot["other"] >= 0.2  # the sleep is nobody's activity
    for cell in profile["cells"]:  # exclusive attribution: the parts never add up to more than the cell
        assert sum(cell[c] for c in chapter_profile.CATEGORIES if c != "other") <= cell["seconds"] + 1e-6
    text = chapter_profile.report([profile], {"float32_gflops": 1.0, "bfloat16_gflops": 2.0})
    assert "99_tiny" in text and "the 5 slowest cells" in text
