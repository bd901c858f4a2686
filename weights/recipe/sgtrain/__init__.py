# sgtrain: the default model's training pipeline (data, autoencoder, teacher, students, step distillation).
