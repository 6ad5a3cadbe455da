"""Looking at runs: TensorBoard dashboards, the phase report, figures and analysis."""
