"""nginx process control (the imperative shell around the L7 compiler's file set)."""
