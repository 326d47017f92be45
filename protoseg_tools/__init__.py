"""Command-line tools around the model, kept out of `modeling_protoseg` (whose modules travel as remote code):

    python -m protoseg_tools.visualize ...                          prototype maps, PCA and self-similarity figures
    python -m protoseg_tools.convert_efficientnet_lite0 FOLDER      ImageNet EfficientNet-Lite0 weights to a backbone
"""
