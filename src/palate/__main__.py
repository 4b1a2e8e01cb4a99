from palate.cli import main

main()
