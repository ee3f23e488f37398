"""Pictures and captioning: coloured shapes with checkable captions, patch encoders, the captioners (chapter 7)."""
