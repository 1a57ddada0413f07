from ulixes_onnx.cli import main

main()
