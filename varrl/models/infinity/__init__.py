"""FoundationVision's Infinity text-to-image next-scale models: transformer, BSQ tokenizer, T5 text path."""
