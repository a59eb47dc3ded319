"""Group teachers: training, checkpoints, and serving logits (in-process or as Ray actors)."""
from raydistill.teachers.frozen import (FrozenTeacher, LocalTeachers, TeacherError, check_teacher_checkpoints,
                                        classes_of, load_teacher, save_teacher, saved_teachers, teacher_checkpoint)
from raydistill.teachers.training import train_teacher

__all__ = ["FrozenTeacher", "LocalTeachers", "check_teacher_checkpoints", "classes_of", "load_teacher",
           "save_teacher", "saved_teachers", "teacher_checkpoint", "TeacherError", "train_teacher"]
