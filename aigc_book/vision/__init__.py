"""Pictures and image encoders for captioning: coloured shapes with checkable captions, patch encoders (chapter 7)."""
