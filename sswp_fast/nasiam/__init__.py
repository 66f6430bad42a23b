"""NASiam (spec ``nasiam.md``): differentiable search of the projector and predictor MLP heads of SimSiam,
MoCo v2 and SimCLR, on CIFAR-style ResNet backbones."""
